"""The ``pyro-vae`` subcommands that read a trained run: ``sample``, ``evaluate``, ``complete``, ``export``.

Each takes a run folder (or an exported one) and writes a figure, a JSON report or a new folder;
none trains. :func:`add_reader_commands` adds them to the command line of :mod:`pyro_vae.cli`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_options import add_device_and_data_flags, add_device_flag, add_weights_flag, positive_int


def add_reader_commands(subparsers) -> None:
    """Add ``sample``, ``evaluate``, ``complete`` and ``export`` to ``subparsers``."""
    _add_sample_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_complete_parser(subparsers)
    _add_export_parser(subparsers)


def _reader_parser(
    subparsers, name: str, handler, *, help: str, description: str, run_dir_help: str, data: bool = True,
    device: bool = True,
) -> argparse.ArgumentParser:  # fmt: skip
    """A subcommand reading RUN_DIR: its positional folder, ``--weights``, and (unless told not to)
    ``--device`` and ``--data-dir``; the caller adds the subcommand's own flags."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.add_argument("run_dir", type=Path, help=run_dir_help)
    add_weights_flag(p)
    if data:
        add_device_and_data_flags(p)
    elif device:
        add_device_flag(p)
    p.set_defaults(handler=handler)
    return p


def _add_sample_parser(subparsers) -> None:
    p = _reader_parser(
        subparsers, "sample", _cmd_sample, help="draw digits from a trained VAE",
        description="Decode z ~ P(z) with a trained VAE and save the decoder means as a grid.",
        run_dir_help="a run folder written by 'pyro-vae train vae'", data=False,
    )  # fmt: skip
    p.add_argument("--num", type=positive_int, default=100, help="number of samples (default 100)")
    p.add_argument("--out", type=Path, default=None, help="PNG file (default RUN_DIR/samples.png)")
    p.add_argument("--seed", type=int, default=0)


def _add_evaluate_parser(subparsers) -> None:
    p = _reader_parser(
        subparsers, "evaluate", _cmd_evaluate,
        help="importance-sampled log p(x) and ELBO of a trained model",
        description="Estimate the per-datapoint ELBO and log p(x) (log p(y|x) for the CVAE and the "
        "regressor; the IWAE bound with K importance samples) on a split, with Monte Carlo standard "
        "errors, effective sample sizes and PSIS k-hat; print them and write RUN_DIR/eval.json.",
        run_dir_help="a run folder written by 'pyro-vae train'",
    )  # fmt: skip
    p.add_argument(
        "--num-samples", "-k", type=positive_int, default=5000,
        help="K importance samples per image (default 5000)",
    )  # fmt: skip
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--subset", type=positive_int, help="only the first N images of the split")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per batch (default 100)")
    p.add_argument(
        "--chunk-size", type=positive_int,
        help="samples per vectorized pass (default: ~20,000 sample-image pairs per pass); lower it if "
        "memory runs out",
    )  # fmt: skip
    p.add_argument("--no-khat", action="store_true", help="skip the PSIS k-hat fit")
    p.add_argument("--out", type=Path, help="JSON file (default RUN_DIR/eval.json)")
    p.add_argument("--no-progress", action="store_true")


def _add_complete_parser(subparsers) -> None:
    p = _reader_parser(
        subparsers, "complete", _cmd_complete,
        help="complete test digits from their middle column with a CVAE or regressor run",
        description="Draw completions Y ~ P(Y|X) of test digits from their binarized column X (the "
        "tutorial's Fig. 8): rows of samples (CVAE) or the prediction (regressor), and the ground truth.",
        run_dir_help="a run folder written by 'pyro-vae train cvae' or 'train regressor'",
    )  # fmt: skip
    p.add_argument(
        "--num-samples", "-s", type=positive_int, default=5, help="completions per digit (default 5)"
    )
    p.add_argument("--num-digits", type=positive_int, default=10, help="test digits (default 10)")
    p.add_argument("--out", type=Path, default=None, help="PNG file (default RUN_DIR/completions.png)")
    p.add_argument("--seed", type=int, default=0)


def _add_export_parser(subparsers) -> None:
    p = _reader_parser(
        subparsers, "export", _cmd_export,
        help="copy a run's best weights into a small run folder for sharing",
        description="Write config.json, metrics.json and a checkpoint holding one set of weights (no "
        "optimizer state) into OUT: a folder that evaluate, sample and complete load like any run.",
        run_dir_help="a run folder written by 'pyro-vae train'", data=False, device=False,
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="the new folder")
    p.add_argument(
        "--dtype", choices=["float32", "float16"], default="float32",
        help="precision of the stored weights (float16: half the size; they load as float32)",
    )  # fmt: skip


def _cmd_sample(args: argparse.Namespace) -> int:
    from .runs import load_vae_run, save_sample_grid
    from .train import resolve_device

    _, vae = load_vae_run(args.run_dir, device=resolve_device(args.device), weights=args.weights)
    out = args.out or args.run_dir / "samples.png"
    save_sample_grid(vae, out, num_images=args.num, seed=args.seed)
    print(f"wrote {args.num} samples to {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run
    from .runs import describe_weights

    path = export_run(args.run_dir, args.out, weights=args.weights, dtype=args.dtype)
    size = path.stat().st_size / 2**20
    weights = describe_weights(args.out)
    print(f"exported the {weights} weights of {args.run_dir} to {args.out} ({size:.1f} MiB)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_write_json
    from .runs import evaluate_run
    from .train import resolve_device

    report, _ = evaluate_run(
        args.run_dir, num_samples=args.num_samples, split=args.split, subset=args.subset,
        batch_size=args.batch_size, chunk_size=args.chunk_size, compute_khat=not args.no_khat,
        weights=args.weights, data_dir=args.data_dir, device=resolve_device(args.device),
        progress=not args.no_progress,
    )  # fmt: skip
    out = args.out or args.run_dir / "eval.json"
    atomic_write_json(out, report)
    r = report
    print(
        f"{r['kind']} run, {r['split']} split, {r['num_images']} images, K={r['num_samples']}:\n"
        f"  log p >= {r['log_likelihood']:.2f} nats/image (Monte Carlo se {r['log_likelihood_se']:.3f}, "
        f"se over images {r['log_likelihood_se_images']:.2f})\n"
        f"  ELBO     {r['elbo']:.2f} nats/image; gap = KL(Q || true posterior) ~ {r['gap']:.2f}\n"
        f"  rate KL(Q || prior) {r['rate']:.2f}, distortion -E_Q log-likelihood {r['distortion']:.2f}\n"
        f"  ESS/K {r['ess_fraction']:.3f}; k-hat > 0.7 for {100 * r['khat_over_0_7']:.1f}% of images\n"
        f"wrote {out}"
    )
    return 0


def _cmd_complete(args: argparse.Namespace) -> int:
    import torch

    from .plotting import save_completion_figure
    from .runs import TASKS, load_eval_data, load_run
    from .train import resolve_device

    device = resolve_device(args.device)
    config, model = load_run(args.run_dir, device=device, weights=args.weights, kinds=("cvae", "regressor"))
    x, y = load_eval_data(config, "test", subset=args.num_digits, data_dir=args.data_dir, device=device)
    torch.manual_seed(args.seed)
    rows = TASKS[config.kind].completion_rows(model, x, args.num_samples)
    out = args.out or args.run_dir / "completions.png"
    save_completion_figure(
        out,
        x,
        [*rows, ("ground truth", y)],
        config.model.column,
        title=f"{config.kind}: test digits completed from column {config.model.column}",
    )
    print(f"wrote completions of {x.shape[0]} test digits to {out}")
    return 0
