"""What every study shares: its command-line edge, output folder, JSON writing, the run folders it
trains, and the statistics it reports.

A study's ``main(argv)`` parses its flags, runs, and writes ``<name>.json`` plus PNG figures to
``--out``. Errors the user can fix (:class:`~pyro_vae.errors.PyroVAEError`) end the program with
one line and exit code 2, as in the ``pyro-vae`` command. Studies that train models put each
run in a subfolder of ``--out`` (:func:`train_or_resume`), so that a study started again on the
same folder continues its interrupted runs and reuses its finished ones.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

from pyro_vae.builders import DEFAULT_HIDDEN_SIZES, DEFAULT_Z_DIM, OBJECTIVES, RunConfig, TrainConfig
from pyro_vae.checkpoint import CHECKPOINT_NAME, atomic_write_json
from pyro_vae.data import NUM_PIXELS, NUM_TRAIN
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.estimators import ImportanceSamplingSummary
from pyro_vae.evaluation import mean_se  # noqa: F401  (the studies' one mean +- se helper)
from pyro_vae.plotting import image_grid
from pyro_vae.runs import (
    load_eval_data,
    load_vae_run,
    read_run_config,
    read_run_history,
    resumed_config,
    score_loaded_run,
    train_run,
)
from pyro_vae.train import TrainHistory, resolve_device
from pyro_vae.vae import VAE


def study_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every study has: ``--out``, ``--device``, ``--data-dir``."""
    parser = argparse.ArgumentParser(prog=f"python -m analysis.{name}", description=description)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and the figures")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding MNIST/raw/*.gz")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_study(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Call a study's ``main`` and turn user errors into one line on stderr and exit code 2."""
    try:
        main(argv)
    except PyroVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def write_results(out_dir: Path, name: str, results: dict[str, Any]) -> Path:
    """Write ``out_dir/<name>.json`` atomically (strict JSON: NaN becomes null).

    ``seconds`` in a study's results is the time of the invocation that wrote them; a study that
    reuses runs trained by an earlier invocation also spent that earlier time. So ``compute``
    totals, over every model behind the numbers, ``training_seconds`` (all its epochs, whenever
    they ran) and ``evaluation_seconds``, beside ``invocation_seconds``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    atomic_write_json(path, {**results, "compute": compute_totals(results)})
    return path


def compute_totals(results: dict[str, Any]) -> dict[str, float]:
    """Sums of every ``train_seconds`` and ``eval_seconds`` in ``results`` (nested anywhere)."""
    totals = {"training_seconds": 0.0, "evaluation_seconds": 0.0}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key == "train_seconds" and isinstance(inner, (int, float)):
                    totals["training_seconds"] += inner
                elif key == "eval_seconds" and isinstance(inner, (int, float)):
                    totals["evaluation_seconds"] += inner
                else:
                    walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk({key: value for key, value in results.items() if key != "compute"})
    return {**totals, "invocation_seconds": float(results.get("seconds", float("nan")))}


def cost_of(*run_dirs: Path, eval_seconds: float) -> dict[str, Any]:
    """What a study of already trained runs cost: each run's training seconds (the sum of its epoch
    times, whenever they ran) and the study's own evaluation seconds; :func:`write_results` totals them."""
    runs = {str(d): {"train_seconds": float(sum(read_run_history(d).epoch_seconds))} for d in run_dirs}
    return {"runs": runs, "eval_seconds": float(eval_seconds)}


def save_figure(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_with_se(ax, x: Sequence[float], rows: Sequence[dict[str, Any]], mean: str, se: str, **style) -> None:
    """``rows[i][mean]`` against ``x`` with error bars ``rows[i][se]`` (circles and caps by default)."""
    style = {"marker": "o", "capsize": 3, **style}
    ax.errorbar(x, [r[mean] for r in rows], yerr=[r[se] for r in rows], **style)


def check_positive(flag: str, values: Sequence[float]) -> None:
    """Raise :class:`ConfigError` unless every value given to ``flag`` is a finite number > 0."""
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad or not values:
        raise ConfigError(f"{flag} needs positive numbers, got {list(values)}")


def add_training_arguments(parser: argparse.ArgumentParser, *, epochs: int, z_dim: bool = True) -> None:
    """The budget and network flags of a study that trains the tutorial's MNIST VAE.

    ``z_dim=False`` leaves ``--z-dim`` out, for a study that sweeps the latent size itself.
    """
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--subset", type=int, default=None, help="train on the first N training images")
    if z_dim:
        parser.add_argument("--z-dim", type=int, default=DEFAULT_Z_DIM)
    parser.add_argument("--hidden", type=int, nargs="+", default=list(DEFAULT_HIDDEN_SIZES))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objective", choices=list(OBJECTIVES), default="meanfield")


def add_evaluation_arguments(
    parser: argparse.ArgumentParser, *, num_samples: int, eval_subset: int, num_samples_help: str
) -> None:
    """``--num-samples`` (particles per test image) and ``--eval-subset`` (first N test images, 0: all)."""
    parser.add_argument("--num-samples", "-k", type=int, default=num_samples, help=num_samples_help)
    parser.add_argument("--eval-subset", type=int, default=eval_subset, help="first N test images (0: all)")


def training_study_parser(
    name: str, description: str, *, epochs: int, num_samples: int, eval_subset: int, num_samples_help: str,
    z_dim: bool = True,
) -> argparse.ArgumentParser:  # fmt: skip
    """The parser of a study that trains MNIST VAEs and scores them: :func:`study_parser` with the
    flags of :func:`add_training_arguments` and :func:`add_evaluation_arguments`; the study adds its own."""
    parser = study_parser(name, description)
    add_training_arguments(parser, epochs=epochs, z_dim=z_dim)
    add_evaluation_arguments(
        parser, num_samples=num_samples, eval_subset=eval_subset, num_samples_help=num_samples_help
    )
    return parser


def start_study(
    parser: argparse.ArgumentParser, argv: list[str] | None, *checks: Callable[[argparse.Namespace], None]
) -> tuple[argparse.Namespace, torch.device]:
    """Parse a study's flags, refuse bad ones, pick the device and create ``--out``.

    ``parser`` comes from :func:`training_study_parser`: its shared training and evaluation flags
    are checked (:func:`check_study_arguments`), then each of ``checks`` (the study's own flags,
    raising :class:`ConfigError`): all before a folder is created or a model trained.
    """
    args = parser.parse_args(argv)
    check_study_arguments(args)
    for check in checks:
        check(args)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    return args, device


def check_at_least_one(*flags: str) -> Callable[[argparse.Namespace], None]:
    """A check for :func:`start_study`: each named integer flag must be >= 1."""

    def check(args: argparse.Namespace) -> None:
        for flag in flags:
            value = getattr(args, flag.lstrip("-").replace("-", "_"))
            if value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")

    return check


def check_study_arguments(args: argparse.Namespace) -> None:
    """Refuse the flags of :func:`add_training_arguments` and :func:`add_evaluation_arguments`
    that no run could use, with the flag's name, before any training starts."""
    check_positive("--lr", [args.lr])
    for name in ("epochs", "batch_size", "num_samples", "z_dim", "subset"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.eval_subset < 0:
        raise ConfigError(f"--eval-subset must be >= 0 (0: all test images), got {args.eval_subset}")


def train_config(args: argparse.Namespace, *, seed: int | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of the study's flags (``seed`` overrides ``--seed``)."""
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed if seed is None else seed,
        objective=args.objective,
        subset=args.subset,
    )


def training_budget(args: argparse.Namespace, *, z_dim: str, eval_images: int) -> dict[str, Any]:
    """The ``budget`` record of a training study's results: the network and every training and
    evaluation flag its numbers depend on (``z_dim``: the latent size as the network shows it)."""
    return {
        "network": f"{NUM_PIXELS}-{'-'.join(map(str, args.hidden))}-{z_dim} (decoder mirrored)",
        "epochs": args.epochs,
        "train_images": args.subset or NUM_TRAIN,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "objective": args.objective,
        "num_samples": args.num_samples,
        "eval_split": "test",
        "eval_images": eval_images,
    }


def plot_validation_curves(
    path: Path, curves: dict[str, Sequence[float]], *, bottom: float, size: tuple[float, float] = (6, 4),
    legend_columns: int = 1,
) -> None:  # fmt: skip
    """The validation ELBO of each run against epochs, one line per label."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    for label, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation ELBO (nats per image)")
    ax.set_ylim(bottom=bottom)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=legend_columns)
    save_figure(fig, path)


def paired_difference(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Mean of the per-image differences a_i - b_i, its standard error, and how often a_i > b_i.

    Two models scored on the same images share the images' difficulty; the paired standard error
    removes it, which the difference of two unpaired means would not.
    """
    a = np.asarray(torch.as_tensor(a).double().cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(b).double().cpu(), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same images, got shapes {a.shape} and {b.shape}")
    return {**mean_se(a - b), "fraction_positive": float(np.mean(a > b))}


def train_or_resume(
    config: RunConfig,
    run_dir: Path,
    *,
    data_dir=None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    label: str = "",
) -> TrainHistory:
    """Train ``config`` into ``run_dir``, continue it there, or reuse it when it is finished.

    A folder that holds a run of another configuration, or of more epochs, is refused rather
    than mixed into the study. Returns the run's history (every epoch, also those of an earlier,
    interrupted invocation: per-epoch train and validation ELBO and seconds).
    """
    resume = (run_dir / CHECKPOINT_NAME).exists()
    if resume:
        saved = read_run_config(run_dir)
        hint = "this study holds another run there; choose another --out or remove that folder"
        resumed_config(
            saved,
            run_dir,
            kind=config.kind,
            model=config.model.to_dict(),
            train=config.train.to_dict(),
            hint=hint,
        )
        if saved.train.epochs > config.train.epochs:
            raise ConfigError(f"{run_dir} holds a run of {saved.train.epochs} epochs; {hint}")
    prefix = f"[{label}] " if label else ""
    _, history = train_run(
        config,
        run_dir,
        data_dir=data_dir,
        device=device,
        resume=resume,
        progress=progress,
        log=lambda line: print(prefix + line, flush=True),
    )
    pyro.clear_param_store()  # the next run registers networks under the same names
    return history


@dataclass(frozen=True)
class ScoredRun:
    """A study's trained run, loaded, and its importance-sampling evaluation.

    ``vae`` holds the best validation weights; ``data`` are the scored test images (the run's
    fixed binarization of the study's ``--eval-subset``); ``report`` and ``summary`` are those of
    :func:`pyro_vae.runs.evaluate_run`, and ``eval_seconds`` the time of that evaluation.
    """

    history: TrainHistory
    config: RunConfig
    vae: VAE
    data: tuple[torch.Tensor, ...]
    report: dict[str, Any]
    summary: ImportanceSamplingSummary
    eval_seconds: float


def train_and_score(
    config: RunConfig,
    run_dir: Path,
    args: argparse.Namespace,
    *,
    device: torch.device | str,
    label: str,
    chunk_size: int | None = None,
    batch_size: int = 100,
) -> ScoredRun:
    """Train (or continue, or reuse) ``config`` in ``run_dir``, then score it on the test split.

    The evaluation uses the study's ``--num-samples`` particles on its ``--eval-subset`` test
    images, with the run's fixed binarization, so every run of a study is scored on the same
    digits and per-image values can be paired. The run and its data are loaded once, for the
    evaluation and for the study's own measurements.
    """
    history = train_or_resume(
        config, run_dir, data_dir=args.data_dir, device=device, progress=not args.no_progress, label=label
    )
    started = time.perf_counter()
    config, vae = load_vae_run(run_dir, device=device)
    data = load_eval_data(
        config, "test", subset=args.eval_subset or None, data_dir=args.data_dir, device=device
    )
    report, summary = score_loaded_run(
        config, vae, data, num_samples=args.num_samples, split="test", weights="best", device=device,
        batch_size=batch_size, chunk_size=chunk_size, progress=not args.no_progress,
    )  # fmt: skip
    eval_seconds = time.perf_counter() - started
    return ScoredRun(history, config, vae, data, report, summary, eval_seconds)


def save_image_panels(
    path: Path,
    panels: Sequence[tuple[str, torch.Tensor]],
    *,
    num_columns: int = 8,
    title: str | None = None,
    panel_width: float = 2.2,
) -> None:
    """Image grids side by side, one titled panel per model (e.g. samples f(z) for shared z)."""
    fig = Figure(figsize=(panel_width * len(panels), panel_width + (0.7 if title else 0.4)))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (panel_title, images) in zip(axes, panels):
        ax.imshow(image_grid(images, num_columns=num_columns), cmap="gray", vmin=0, vmax=1)
        ax.set_title(panel_title, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.82 if title else 0.9, wspace=0.05)
    fig.savefig(path, dpi=110)
