"""The command line: ``python -m analysis.zero_error_1d``."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyro_vae.errors import ConfigError
from pyro_vae.train import resolve_device

from ..common import study_parser, write_results
from .construction import kl_expansion
from .figures import (
    plot_kl_vs_sigma,
    plot_kl_vs_x,
    plot_learned_decoder,
    plot_learned_gap,
    plot_p_sigma,
    plot_posteriors,
)
from .ground_truths import GaussianMixture1D, GroundTruth1D, Gumbel1D
from .learned import learned_comparison
from .settings import (
    DEFAULT_LEARNED_SIGMAS,
    DEFAULT_LOCS,
    DEFAULT_NUM_POINTS,
    DEFAULT_SCALES,
    DEFAULT_SIGMAS,
    DEFAULT_WEIGHTS,
    LEARNED_EPOCHS,
    LEARNED_LR,
    NAME,
    SUMMARY,
)
from .study import closed_form_check, study_ground_truth

GROUND_TRUTHS = ("mixture", "gumbel")


def _check_positive(values: Sequence[float], flag: str) -> None:
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"{flag} must be positive, got {bad[0]:g}")


def check_arguments(args) -> None:
    """Refuse out-of-range settings with one-line :class:`~pyro_vae.errors.ConfigError` messages."""
    _check_positive(args.sigmas, "--sigmas")
    if len(set(args.sigmas)) < 2:
        raise ConfigError("--sigmas needs at least two distinct values to fit the slope of KL against sigma")
    if args.xs is not None and not all(math.isfinite(x) for x in args.xs):
        raise ConfigError("--xs must be finite numbers")
    if args.num_points < 64:
        raise ConfigError(f"--num-points must be at least 64, got {args.num_points}")
    if args.curvature_sigma is not None:
        _check_positive([args.curvature_sigma], "--curvature-sigma")
    if args.posterior_x is not None and not math.isfinite(args.posterior_x):
        raise ConfigError("--posterior-x must be a finite number")
    if args.learned:
        _check_positive(args.learned_sigmas, "--learned-sigmas")
        for flag in ("learned_train_size", "learned_test_size", "learned_epochs", "learned_particles"):
            if getattr(args, flag) < 1:
                raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        if args.learned_fine_tune_epochs is not None and args.learned_fine_tune_epochs < 0:
            raise ConfigError(f"--learned-fine-tune-epochs must be >= 0, got {args.learned_fine_tune_epochs}")
        if any(h < 1 for h in args.learned_hidden):
            raise ConfigError(f"--learned-hidden sizes must be at least 1, got {args.learned_hidden}")
        _check_positive([args.learned_lr], "--learned-lr")


def build_ground_truth(name: str, args) -> GroundTruth1D:
    if name == "mixture":
        return GaussianMixture1D(args.weights, args.locs, args.scales)
    return Gumbel1D()


def _summary_line(name: str, study: dict[str, Any]) -> str:
    kl = ", ".join(f"{v:.2e}" for v in study["kl_mean"])
    log_p = ", ".join(f"{v:.1e}" for v in study["max_abs_log_p_error"])
    tv = ", ".join(f"{v:.1e}" for v in study["total_variation"])
    return (
        f"{name}: mean KL [{kl}] at sigma {study['sigmas']}; slope {study['slope']:.3f} +- "
        f"{study['slope_stderr']:.3f}; max |log P_sigma - log P_gt| [{log_p}]; TV [{tv}]; "
        f"quadrature error (N -> 2N) {study['quadrature']['max_abs_kl_doubling_error']:.1e} nats"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = study_parser(NAME, SUMMARY)
    parser.add_argument(
        "--weights", type=float, nargs="+", default=list(DEFAULT_WEIGHTS), help="mixture weights"
    )
    parser.add_argument("--locs", type=float, nargs="+", default=list(DEFAULT_LOCS), help="mixture locations")
    parser.add_argument(
        "--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), help="mixture scales"
    )
    parser.add_argument(
        "--ground-truths",
        nargs="+",
        choices=GROUND_TRUTHS,
        default=list(GROUND_TRUTHS),
        help="the first one fills the top-level keys of the JSON (default: mixture gumbel)",
    )
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS))
    parser.add_argument(
        "--xs",
        type=float,
        nargs="+",
        default=None,
        help="X values (default: 25 quantiles, levels 0.02..0.98, of each ground truth)",
    )
    parser.add_argument("--num-points", type=int, default=DEFAULT_NUM_POINTS, help="z0 quadrature points")
    parser.add_argument(
        "--curvature-sigma",
        type=float,
        default=None,
        help="sigma of the KL-against-X figure (default: smallest)",
    )
    parser.add_argument("--posterior-x", type=float, default=None, help="X of the posterior figure")
    parser.add_argument("--learned", action="store_true", help="also train and evaluate 1D VAEs in Pyro")
    parser.add_argument("--learned-sigmas", type=float, nargs="+", default=list(DEFAULT_LEARNED_SIGMAS))
    parser.add_argument("--learned-train-size", type=int, default=4000)
    parser.add_argument("--learned-test-size", type=int, default=256)
    parser.add_argument("--learned-epochs", type=int, default=LEARNED_EPOCHS)
    parser.add_argument(
        "--learned-fine-tune-epochs",
        type=int,
        default=None,
        help="epochs at a tenth of --learned-lr after the first stage (default: --learned-epochs)",
    )
    parser.add_argument("--learned-hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--learned-lr", type=float, default=LEARNED_LR)
    parser.add_argument(
        "--learned-particles", type=int, default=1000, help="particles of the estimator cross-check"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_arguments(args)
    sigmas = np.array(sorted(set(args.sigmas), reverse=True))
    xs = None if args.xs is None else np.asarray(args.xs, dtype=np.float64)
    curvature_sigma = args.curvature_sigma if args.curvature_sigma is not None else float(sigmas.min())
    truths = {name: build_ground_truth(name, args) for name in dict.fromkeys(args.ground_truths)}

    started = time.perf_counter()
    studies, arrays = {}, {}
    for name, truth in truths.items():
        studies[name], arrays[name] = study_ground_truth(
            truth, sigmas=sigmas, xs=xs, num_points=args.num_points, curvature_sigma=curvature_sigma
        )
    check = closed_form_check(xs, sigmas, num_points=args.num_points)
    table_seconds = time.perf_counter() - started

    primary_name = next(iter(truths))
    results: dict[str, Any] = dict(studies[primary_name])
    results.update(
        primary_ground_truth=primary_name,
        by_ground_truth=studies,
        closed_form_check=check,
        table_seconds=table_seconds,
    )

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot_kl_vs_sigma(out / "kl_vs_sigma.png", studies)
    for name, truth in truths.items():
        study = studies[name]
        plot_p_sigma(out / f"p_sigma_{name}.png", name, arrays[name]["tv"], sigmas)
        if args.posterior_x is not None:
            posterior_x = args.posterior_x
        else:  # the X of the grid where g is most curved
            curvature = np.abs(kl_expansion(truth, arrays[name]["xs"])["g_second_over_g_prime"])
            posterior_x = float(arrays[name]["xs"][int(np.argmax(curvature))])
        study["posterior_x"] = posterior_x
        plot_posteriors(out / f"posterior_{name}.png", truth, posterior_x, sigmas, num_points=args.num_points)
        plot_kl_vs_x(out / f"kl_vs_x_{name}.png", name, study["curvature"])
    results["posterior_x"] = studies[primary_name]["posterior_x"]

    if args.learned:
        device = resolve_device(args.device)
        results["learned"] = learned_comparison(
            truths[primary_name],
            sorted(set(args.learned_sigmas), reverse=True),
            num_train=args.learned_train_size,
            num_test=args.learned_test_size,
            hidden_sizes=tuple(args.learned_hidden),
            epochs=args.learned_epochs,
            fine_tune_epochs=args.learned_fine_tune_epochs,
            lr=args.learned_lr,
            seed=args.seed,
            num_points=args.num_points,
            num_particles=args.learned_particles,
            device=device,
            progress=not args.no_progress,
            log=print,
        )
        plot_learned_decoder(out / "learned_decoder.png", results["learned"])
        plot_learned_gap(out / "learned_gap.png", results["learned"])
    results["seconds"] = time.perf_counter() - started
    results["figures"] = sorted(p.name for p in out.glob("*.png"))
    path = write_results(out, NAME, results)

    for name, study in studies.items():
        print(_summary_line(name, study))
    print(
        f"Gaussian closed form: max |KL quadrature - exact| {check['max_abs_kl_error']:.1e}, "
        f"max |log P_sigma error| {check['max_abs_log_p_sigma_error']:.1e}"
    )
    print(f"Table computed in {table_seconds:.1f} s (total {results['seconds']:.1f} s). Wrote {path}")
    return results
