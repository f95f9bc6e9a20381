"""Training throughput against batch size, 32 to 4096: images per second of one epoch.

For each batch size, one epoch of :func:`pyro_vae.train.train` (the tutorial's network, Trace_ELBO,
dynamic binarization) over ``--num-images`` training images; the plot ``scaling_<device>.png``
and a table go to ``benchmarks/``.

    python -m benchmarks.scaling                    # CPU
    python -m benchmarks.scaling --device cuda      # on a GPU machine
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyro_vae import VAEConfig, build_vae, train
from pyro_vae.data import binarize, fixed_binarization, load_mnist

from .results_file import publish

HERE = Path(__file__).resolve().parent


def epoch_seconds(images: torch.Tensor, valid: torch.Tensor, batch_size: int, device: torch.device) -> float:
    torch.manual_seed(0)
    vae = build_vae(VAEConfig())
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    train(vae, (images,), (valid,), epochs=1, batch_size=batch_size, batch_transform=lambda x: (binarize(x),),
          device=device, progress=False, log=None)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048, 4096]
    )
    parser.add_argument("--num-images", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    images = load_mnist("train", subset=args.num_images, device=device).images
    valid = fixed_binarization(load_mnist("valid", subset=100).images, 0).to(device)
    epoch_seconds(images[:4096], valid, 512, device)  # warm-up
    rows, throughput = [], []
    for batch_size in args.batch_sizes:
        seconds = epoch_seconds(images, valid, batch_size, device)
        throughput.append(images.shape[0] / seconds)
        rows.append(f"| {batch_size} | {seconds:.2f} | {throughput[-1]:,.0f} |")
        print(rows[-1], flush=True)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(args.batch_sizes, throughput, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("training images / s")
    ax.set_title(f"pyro-vae training throughput ({device.type}, 784-1000-500-250-30)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figure = HERE / f"scaling_{device.type}.png"
    if not args.no_write:  # --no-write leaves the stored figure alone too
        fig.savefig(figure, dpi=100)
    publish(
        f"scaling_{device.type}",
        f"Throughput against batch size, {device.type} (`python -m benchmarks.scaling`)",
        f"One epoch of {images.shape[0]:,} images per batch size, tutorial network, Trace_ELBO. "
        f"Plot: [{figure.name}]({figure.name}).",
        [">batch", ">epoch (s)", ">images/s"],
        rows,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
