"""The command line's flag groups and value parsers, shared by the ``pyro-vae`` subcommands.

A parser turns one flag's text into a value or raises ``argparse.ArgumentTypeError``, which
argparse prints as one usage line with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .builders import OBJECTIVES, TrainConfig
from .data import column_problem
from .schedules import IWAE_SCHEDULE_EPOCHS, LR_SCHEDULES


def positive_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def adam_beta(text: str) -> float:
    value = _parse(float, text, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def positive_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def column_index(text: str) -> int:
    value = _parse(int, text, "an integer")
    if (problem := column_problem(value)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def snapshot_spec(text: str) -> str | tuple[int, ...]:
    """``log`` (1, 2, 5, 10, 20, 50, ... and the last epoch) or a comma list of epochs."""
    if text == "log":
        return text
    epochs = tuple(positive_int(part) for part in text.split(",") if part.strip())
    if not epochs:
        raise argparse.ArgumentTypeError(f"must be 'log' or a comma list of epochs, got {text!r}")
    return epochs


def option_pair(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of an extension's setting; the value is read as JSON where it parses."""
    from .plugins import parse_option

    try:
        return parse_option(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parse(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def add_optimization_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr", type=positive_float, help=f"Adam learning rate (default {TrainConfig.lr})")
    p.add_argument(
        "--adam-betas", type=adam_beta, nargs=2, metavar=("B1", "B2"), help="Adam betas (default 0.9 0.999)"
    )
    p.add_argument(
        "--adam-eps", type=positive_float, help="Adam epsilon (default 1e-8; the IWAE paper's 1e-4)"
    )
    p.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        help="meanfield (default): the tutorial's Eq. 10, closed-form KL where the prior allows it; "
        "trace: sampled KL; iwae: the importance-weighted bound with --num-particles K; iwae-dreg: the "
        "same with the doubly-reparameterized encoder gradient; jit-*: compiled once (fixed batch size, "
        "faster)",
    )
    p.add_argument(
        "--num-particles", "-k", type=positive_int,
        help="K samples per datapoint: the iwae bound's K, else K averaged ELBO samples (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--lr-schedule", choices=list(LR_SCHEDULES),
        help=f"none (default); iwae: stages i=0..7 of 3^i epochs at lr*10^(-i/7) ({IWAE_SCHEDULE_EPOCHS} "
        "epochs); cosine: decay to 0 over --epochs; plateau: halve after 5 epochs without a better "
        "validation ELBO; step: multiply by --lr-decay at --lr-milestones",
    )  # fmt: skip
    p.add_argument(
        "--lr-milestones", type=positive_int, nargs="+", metavar="EPOCH",
        help="the step schedule: epochs after which the rate is multiplied by --lr-decay",
    )  # fmt: skip
    p.add_argument("--lr-decay", type=positive_float, help="the step schedule's factor (default 0.1)")
    p.add_argument(
        "--kl-warmup", type=non_negative_float, metavar="EPOCHS",
        help="raise the KL weight linearly from 0 to 1 over EPOCHS epochs (default 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--clip-grad-norm", type=positive_float, metavar="NORM",
        help="clip the total gradient norm to NORM (default: no clipping)",
    )  # fmt: skip
    p.add_argument(
        "--patience", type=positive_int, help="stop after N epochs without a better validation ELBO"
    )
    p.add_argument(
        "--init-output-bias", action="store_true", default=None,
        help="start the decoder's output bias at the logit of the mean training image",
    )  # fmt: skip


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def add_device_and_data_flags(p: argparse.ArgumentParser) -> None:
    add_device_flag(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding MNIST/raw/*.gz (default: the repository's data/)",
    )


def add_weights_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=["best", "last"],
        default="best",
        help="best: the epoch with the highest validation ELBO (default); last: the final epoch",
    )
