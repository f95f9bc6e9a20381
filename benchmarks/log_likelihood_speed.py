"""Throughput of importance-sampled log p(x): images x particles per second.

Side by side in one process, interleaved repetitions, for 1,000 test images at K = 1,000:

- **reference**: a straightforward chunked PyTorch loop (encode once, draw K particles in chunks,
  score with ``Bernoulli(logits).to_event(1)``, logsumexp), the baseline the issue measured;
- **pyro_vae**: :func:`pyro_vae.estimators.log_likelihood`, generic over Pyro model/guide pairs
  (particles vectorized with an outer plate, fused Bernoulli log-density).

    python -m benchmarks.log_likelihood_speed                  # both networks, CPU
    python -m benchmarks.log_likelihood_speed --images 10000 --num-samples 5000 --device cuda
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import pyro.distributions as dist
import torch

from pyro_vae import VAEConfig, build_vae, estimators
from pyro_vae.data import fixed_binarization, load_mnist

from .results_file import publish

NETWORKS = {
    "784-400-20": VAEConfig(z_dim=20, hidden_sizes=(400,)),
    "tutorial 784-1000-500-250-30": VAEConfig(),
}


def reference_log_likelihood(vae, images: torch.Tensor, num_samples: int, chunk_size: int, batch_size: int):
    """The straightforward version: plain torch, torch's Bernoulli, chunks over K and images."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size]
            q = vae.encoder(x)
            prior = vae.prior()
            log_w = []
            for _ in range(0, num_samples, chunk_size):
                z = q.sample((chunk_size,))
                logits = vae.decoder.body(z)
                log_w.append(
                    dist.Bernoulli(logits=logits).to_event(1).log_prob(x) + prior.log_prob(z) - q.log_prob(z)
                )
            out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(num_samples))
    return torch.cat(out)


def pyro_vae_log_likelihood(vae, images: torch.Tensor, num_samples: int, chunk_size: int, batch_size: int):
    return estimators.log_likelihood(
        vae.model, vae.guide, images, num_samples=num_samples, chunk_size=chunk_size, batch_size=batch_size
    )


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn(*args)
    if result.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    pyro.enable_validation(False)  # as in any timing: validation checks the data on every call
    images = fixed_binarization(load_mnist("test", subset=args.images).images, 0).to(device)
    pairs = args.images * args.num_samples
    rows = []
    for name in args.networks:
        torch.manual_seed(0)
        vae = build_vae(NETWORKS[name]).to(device).eval()
        sizes = (args.num_samples, args.chunk_size, args.batch_size)
        reference_log_likelihood(vae, images[: args.batch_size], 2 * args.chunk_size, *sizes[1:])  # warm-up
        pyro_vae_log_likelihood(vae, images[: args.batch_size], 2 * args.chunk_size, *sizes[1:])
        times = {"reference": [], "pyro_vae": []}
        for _ in range(args.repeats):
            t, ref = timed(reference_log_likelihood, vae, images, *sizes)
            times["reference"].append(t)
            t, ours = timed(pyro_vae_log_likelihood, vae, images, *sizes)
            times["pyro_vae"].append(t)
        # Different random draws: the two agree within Monte Carlo error, not exactly.
        difference = float((ref - ours).mean())
        ref_t, ours_t = min(times["reference"]), min(times["pyro_vae"])
        rows.append(
            f"| {name} | {device.type} | {ref_t:.1f} s | {ours_t:.1f} s | {pairs / ours_t:,.0f} "
            f"| {ref_t / ours_t:.2f}x | {difference:+.3f} |"
        )
        print(rows[-1], flush=True)
    publish(
        f"log_likelihood_speed_{device.type}",
        "Importance-sampled log p(x) (`python -m benchmarks.log_likelihood_speed`)",
        f"{args.images:,} test images x K = {args.num_samples:,} particles, {args.batch_size} images and "
        f"{args.chunk_size} particles per pass, best of {args.repeats} interleaved repetitions.",
        ["network", "device", ">reference (plain torch)", ">pyro_vae.estimators", ">images x particles / s",
         ">speed-up", ">mean difference (nats)"],
        rows,
        write=not args.no_write,
    )  # fmt: skip


if __name__ == "__main__":
    main()
