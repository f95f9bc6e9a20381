"""Epoch time of the IWAE paper's network: pyro-vae's objectives against plain eager PyTorch loops.

The training recipe of Burda et al. (2016) runs 3,280 epochs of a 784-200-200-50 tanh VAE; what
that costs decides whether it can be reproduced on a CPU. Each pyro-vae setup is
:func:`pyro_vae.train.train` for one epoch (validation on 100 images) with an objective; its peer
is the straightforward eager PyTorch loop a user would write for the same loss, on the same
networks (``build_vae``'s, same initial weights), the same preloaded images, dynamic binarization
(``torch.bernoulli``), batch size and Adam (torch's default, foreach) settings:

- ``meanfield`` (the default, Eq. 10) and ``jit-meanfield`` against BCE + the closed-form KL;
- ``iwae`` and ``jit-iwae`` with K particles against log (1/K) sum_k w_k written out with
  ``logsumexp``.

Each timing is a run's second epoch (the first pays one-time costs such as compiling a JIT
objective). Repetitions are interleaved (setup A, its peer, setup B, ...) so machine noise hits all alike; the
table reports the fastest repetition of each (interference only adds time), the ratio of the
fastest times, and the spread of the per-repetition ratios.

    python -m benchmarks.recipe_speed                           # batch 20 and 100, 10,000 images
    python -m benchmarks.recipe_speed --batch-sizes 100 --repeats 5 --num-images 50000
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import pyro
import torch
import torch.nn.functional as F

from pyro_vae import VAEConfig, build_vae, train
from pyro_vae.data import binarize, fixed_binarization, load_mnist, minibatch_indices
from pyro_vae.nets import MIN_SCALE

from .results_file import publish

IWAE_NET = VAEConfig(z_dim=50, hidden_sizes=(200, 200), activation="tanh")
LOG_2PI = math.log(2 * math.pi)


def pyro_epoch(images, valid, batch_size: int, objective: str, num_particles: int) -> float:
    """Seconds of the second epoch of :func:`pyro_vae.train.train` with ``objective``.

    The first epoch pays the one-time costs (a JIT objective compiles its trace there); the
    second is what each of a long run's epochs costs (``TrainHistory.epoch_seconds``, which
    includes scoring the 100 validation images).
    """
    torch.manual_seed(0)
    vae = build_vae(IWAE_NET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation notice
        history = train(
            vae, (images,), (valid,), epochs=2, batch_size=batch_size, objective=objective,
            num_particles=num_particles, batch_transform=lambda x: (binarize(x),), progress=False, log=None,
        )  # fmt: skip
    return history.epoch_seconds[-1]


def plain_epoch(images, batch_size: int, num_particles: int | None) -> float:
    """Seconds of the second epoch of a hand-written eager loop: Eq. 10 (``None``) or the IWAE bound."""
    torch.manual_seed(0)
    vae = build_vae(IWAE_NET)
    encoder, decoder = vae.encoder.body, vae.decoder.body
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        started = time.perf_counter()
        _plain_pass(images, batch_size, num_particles, encoder, decoder, optimizer, generator)
    return time.perf_counter() - started


def _plain_pass(images, batch_size, num_particles, encoder, decoder, optimizer, generator) -> float:
    total = 0.0
    for idx in minibatch_indices(images.shape[0], batch_size, generator=generator):
        x = torch.bernoulli(images[idx])
        z_loc, raw_scale = encoder(x).split(IWAE_NET.z_dim, dim=-1)
        z_scale = F.softplus(raw_scale) + MIN_SCALE
        if num_particles is None:
            z = z_loc + z_scale * torch.randn_like(z_loc)
            reconstruction = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
            kl = 0.5 * (z_scale.pow(2) + z_loc.pow(2) - 1 - 2 * z_scale.log()).sum()
            loss = reconstruction + kl
        else:
            eps = torch.randn(num_particles, *z_loc.shape)
            z = z_loc + z_scale * eps  # (K, B, z_dim)
            log_px = -F.binary_cross_entropy_with_logits(decoder(z), x.expand(num_particles, -1, -1),
                                                         reduction="none").sum(-1)  # fmt: skip
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
            log_qz = (-0.5 * (eps.pow(2) + LOG_2PI) - z_scale.log()).sum(-1)
            log_w = log_px + log_pz - log_qz  # (K, B)
            loss = -(torch.logsumexp(log_w, 0) - math.log(num_particles)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--num-particles", "-k", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    images = load_mnist("train", subset=args.num_images).images
    valid = fixed_binarization(load_mnist("valid", subset=100).images, 0)
    k = args.num_particles
    # (label, pyro-vae objective, its K, the peer's K: None for Eq. 10)
    setups = [
        ("meanfield (default, Eq. 10)", "meanfield", 1, None),
        ("jit-meanfield", "jit-meanfield", 1, None),
        (f"iwae, K = {k}", "iwae", k, k),
        (f"jit-iwae, K = {k}", "jit-iwae", k, k),
    ]
    rows = []
    for batch_size in args.batch_sizes:
        times = {label: ([], []) for label, *_ in setups}
        for _ in range(args.repeats):
            for label, objective, particles, peer in setups:
                times[label][0].append(pyro_epoch(images, valid, batch_size, objective, particles))
                times[label][1].append(plain_epoch(images, batch_size, peer))
        for label, *_ in setups:
            ours, plain = times[label]
            ratios = [a / b for a, b in zip(ours, plain)]
            step_ms = 1000 * min(ours) / math.ceil(len(images) / batch_size)
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
            rows.append(
                f"| {batch_size} | {label} | {min(ours):.2f} | {min(plain):.2f} "
                f"| **{min(ours) / min(plain):.2f}x** | {spread} | {step_ms:.2f} |"
            )
            print(rows[-1], flush=True)
    pyro.clear_param_store()
    epoch_scale = 50_000 / len(images)
    publish(
        "recipe_speed",
        "The IWAE paper's network: pyro-vae against plain eager PyTorch "
        "(`python -m benchmarks.recipe_speed`)",
        f"784-200-200-50 tanh (decoder mirrored), {len(images):,} images per epoch (x{epoch_scale:g} for "
        f"the 50,000-image split), the second epoch of each run, best of {args.repeats} interleaved "
        "repetitions; the peer is the eager loop of the same loss (default Adam, `torch.bernoulli` "
        "binarization). Ratio < 1: pyro-vae is faster.",
        [">batch", "pyro-vae objective", ">pyro-vae epoch (s)", ">plain eager epoch (s)", ">ratio of best",
         ">spread of ratios", ">pyro-vae ms/step"],
        rows,
        write=not args.no_write,
    )  # fmt: skip


if __name__ == "__main__":
    main()
