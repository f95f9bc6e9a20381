"""One training epoch: this project's Pyro SVI against a plain PyTorch VAE loop, side by side.

Both sides train the same networks (``build_vae``'s encoder and decoder) on the same
preloaded, dynamically binarized images with the same batch size and Adam. The plain loop uses
the analytic-KL loss (BCE + Eq. 7 of the tutorial) written directly in PyTorch; the Pyro side
is :func:`pyro_vae.train.train` with ``Trace_ELBO`` (a one-sample KL estimate through the prior
and guide densities). Repetitions are interleaved (Pyro, plain, Pyro, plain, ...) so that
machine noise hits both alike; the table reports the best (fastest) epoch of each, since
interference from other processes only ever adds time, and the ratio of epoch
times.

    python -m benchmarks.train_speed                      # full 50,000-image epoch, batch 128
    python -m benchmarks.train_speed --batch-sizes 128 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_vae import VAEConfig, build_vae, train
from pyro_vae.data import binarize, fixed_binarization, load_mnist, minibatch_indices

from .results_file import publish


def pyro_epoch(
    config: VAEConfig, images: torch.Tensor, valid: torch.Tensor, batch_size: int, objective: str
) -> float:
    """Seconds for one epoch of :func:`pyro_vae.train.train` (validation on 100 images only)."""
    from pyro_vae.builders import build_objective

    torch.manual_seed(0)
    vae = build_vae(config)
    started = time.perf_counter()
    train(
        vae,
        (images,),
        (valid,),
        epochs=1,
        batch_size=batch_size,
        lr=1e-3,
        seed=0,
        loss=build_objective(objective),
        batch_transform=lambda x: (binarize(x),),
        progress=False,
        log=None,
    )
    return time.perf_counter() - started


def plain_epoch(config: VAEConfig, images: torch.Tensor, batch_size: int) -> float:
    """Seconds for one epoch of a hand-written PyTorch VAE loop with the analytic KL."""
    torch.manual_seed(0)
    vae = build_vae(config)
    encoder, decoder_body = vae.encoder.body, vae.decoder.body
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for idx in minibatch_indices(images.shape[0], batch_size, generator=generator):
        x = binarize(images[idx])
        z_loc, raw_scale = encoder(x).split(config.z_dim, dim=-1)
        z_scale = F.softplus(raw_scale) + 1e-5
        z = z_loc + z_scale * torch.randn_like(z_loc)
        logits = decoder_body(z)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (z_scale.pow(2) + z_loc.pow(2) - 1 - 2 * z_scale.log()).sum()
        loss = reconstruction + kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the Pyro side returns a float every step too
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=None, help="default: the 50,000-image train split")
    parser.add_argument("--hidden", type=int, nargs="+", default=[1000, 500, 250])
    parser.add_argument("--z-dim", type=int, default=30)
    parser.add_argument("--objective", default="trace")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    config = VAEConfig(z_dim=args.z_dim, hidden_sizes=tuple(args.hidden))
    images = load_mnist("train", subset=args.num_images).images
    valid = fixed_binarization(load_mnist("valid", subset=100).images, 0)
    rows = []
    for batch_size in args.batch_sizes:
        pyro_times, plain_times = [], []
        pyro_epoch(config, images[:2000], valid, batch_size, args.objective)  # warm-up
        plain_epoch(config, images[:2000], batch_size)
        for _ in range(args.repeats):
            pyro_times.append(pyro_epoch(config, images, valid, batch_size, args.objective))
            plain_times.append(plain_epoch(config, images, batch_size))
        pyro_t, plain_t = min(pyro_times), min(plain_times)
        steps = -(-images.shape[0] // batch_size)
        rows.append(
            f"| {batch_size} | {images.shape[0] / pyro_t:,.0f} | {images.shape[0] / plain_t:,.0f} "
            f"| {pyro_t / plain_t:.2f}x | {1000 * (pyro_t - plain_t) / steps:.1f} ms |"
        )
        print(rows[-1], flush=True)
    pyro.clear_param_store()
    publish(
        "train_speed",
        "Training epoch: Pyro SVI vs plain PyTorch (`python -m benchmarks.train_speed`)",
        f"Network {[784, *args.hidden, args.z_dim]} (decoder mirrored), "
        f"{images.shape[0]:,} images per epoch, objective `{args.objective}`, "
        f"best of {args.repeats} interleaved repetitions.",
        [">batch", ">Pyro SVI images/s", ">plain PyTorch images/s", ">time ratio (Pyro / plain)",
         ">Pyro overhead per step"],
        rows,
        write=not args.no_write,
    )  # fmt: skip


if __name__ == "__main__":
    main()
