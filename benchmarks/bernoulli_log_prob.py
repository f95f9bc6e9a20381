"""Is :class:`pyro_vae.distributions.FactorizedBernoulli` worth keeping? Its log-density against
``pyro.distributions.Bernoulli(logits=...).to_event(1)`` on the evaluation hot loop.

Importance sampling scores K particles for every image: a ``(K, B, 784)`` tensor of logits per
batch, without gradients. Both distributions give the same numbers (the largest difference is
printed); the table gives the time of one ``log_prob`` call, best of ``--repeats`` interleaved
repetitions, for a few K at batch 100, one thread (the evaluation default on a shared CPU).

    python -m benchmarks.bernoulli_log_prob
"""

from __future__ import annotations

import argparse
import time

import pyro.distributions as dist
import torch

from pyro_vae.distributions import FactorizedBernoulli

from .results_file import publish


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(args.batch, 784))
    rows = []
    with torch.no_grad():
        for k in args.particles:
            logits = torch.randn(k, args.batch, 784)
            reference = dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
            fused = FactorizedBernoulli(logits, validate_args=False)
            difference = float((reference.log_prob(x) - fused.log_prob(x)).abs().max())
            plain = best_time(lambda d=reference: d.log_prob(x), args.repeats)
            ours = best_time(lambda d=fused: d.log_prob(x), args.repeats)
            rows.append((k, plain, ours, difference))
            print(f"K={k}: Bernoulli {plain * 1e3:.1f} ms, FactorizedBernoulli {ours * 1e3:.1f} ms")
    publish(
        "bernoulli_log_prob",
        "Bernoulli log-density on the evaluation hot loop (`python -m benchmarks.bernoulli_log_prob`)",
        f"One `log_prob` of `(K, {args.batch}, 784)` logits, no gradients, best of {args.repeats}.",
        [">K", ">`Bernoulli(logits).to_event(1)` (ms)", ">`FactorizedBernoulli` (ms)", ">speed-up",
         ">max difference (nats)"],
        [f"| {k} | {p * 1e3:.1f} | {o * 1e3:.1f} | **{p / o:.2f}x** | {d:.1e} |" for k, p, o, d in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
