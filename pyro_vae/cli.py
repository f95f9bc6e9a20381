"""Command line: ``pyro-vae train vae ...``, ``pyro-vae sample RUN_DIR ...``.

argparse lives here and only here; library functions take explicit keyword arguments. Errors the
user can fix (:class:`~pyro_vae.errors.PyroVAEError`) are printed as one argparse-style line with
exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .builders import LIKELIHOODS, OBJECTIVES, RunConfig, TrainConfig, VAEConfig
from .checkpoint import CHECKPOINT_NAME
from .errors import CheckpointError, ConfigError, PyroVAEError

PROG = "pyro-vae"


def _positive_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _parse(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _add_train_vae_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "vae",
        help="train a VAE on MNIST",
        description="Train a VAE (tutorial section 4.1) on MNIST with SVI and write a run folder: "
        "config.json, checkpoint.pt, metrics.json, samples.png, reconstructions.png, elbo.png.",
    )
    # Model and training flags default to None so that --resume can tell given flags from
    # defaults; the defaults themselves live in VAEConfig / TrainConfig.
    p.add_argument("--epochs", type=_non_negative_int, help=f"total epochs (default {TrainConfig.epochs})")
    p.add_argument("--batch-size", type=_positive_int, help=f"default {TrainConfig.batch_size}")
    p.add_argument("--z-dim", type=_positive_int, help=f"latent dimensions (default {VAEConfig.z_dim})")
    p.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        metavar="H",
        help="encoder hidden sizes; the decoder mirrors them (default 1000 500 250)",
    )
    p.add_argument(
        "--likelihood",
        choices=sorted(LIKELIHOODS),
        help="bernoulli: dynamically binarized pixels (default); gaussian: N(f(z), sigma^2 I) "
        "on grayscale intensities",
    )
    p.add_argument(
        "--sigma",
        type=_positive_float,
        help=f"standard deviation of the gaussian likelihood (default {VAEConfig.sigma})",
    )
    p.add_argument("--lr", type=_positive_float, help=f"Adam learning rate (default {TrainConfig.lr})")
    p.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        help="ELBO estimator: trace (default, Trace_ELBO), meanfield (analytic KL), jit-*",
    )
    p.add_argument("--subset", type=_positive_int, help="train on the first N training images only")
    p.add_argument("--seed", type=int, help=f"default {TrainConfig.seed}")
    _add_common_run_flags(p)
    p.add_argument("--out", type=Path, default=Path("runs/vae"), help="run folder (default runs/vae)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train_vae)


def _add_common_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding MNIST/raw/*.gz (default: the repository's data/)",
    )


def _add_sample_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="draw digits from a trained VAE",
        description="Decode z ~ P(z) with a trained VAE and save the decoder means as a grid.",
    )
    p.add_argument("run_dir", type=Path, help="a run folder written by 'pyro-vae train vae'")
    p.add_argument("--num", type=_positive_int, default=100, help="number of samples (default 100)")
    p.add_argument("--out", type=Path, default=None, help="PNG file (default RUN_DIR/samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=_cmd_sample)


def _add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="importance-sampled log p(x) and ELBO of a trained model",
        description="Estimate the per-image ELBO and log p(x) (IWAE bound with K particles) on a split, with "
        "Monte Carlo standard errors, effective sample sizes and PSIS k-hat; print them and write "
        "RUN_DIR/eval.json.",
    )
    p.add_argument("run_dir", type=Path, help="a run folder written by 'pyro-vae train'")
    p.add_argument(
        "--num-samples", "-k", type=_positive_int, default=5000, help="K particles per image (default 5000)"
    )
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--subset", type=_positive_int, help="only the first N images of the split")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="images per batch (default 100)")
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        help="particles per vectorized pass (default: ~20,000 "
        "particle-image pairs per pass); lower it if memory runs out",
    )
    p.add_argument("--no-khat", action="store_true", help="skip the PSIS k-hat fit")
    p.add_argument("--out", type=Path, help="JSON file (default RUN_DIR/eval.json)")
    p.add_argument("--no-progress", action="store_true")
    _add_common_run_flags(p)
    p.set_defaults(handler=_cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Pyro VAEs from Doersch's tutorial.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a model", description="Train a model into a run folder.")
    models = train.add_subparsers(dest="model_kind", required=True, metavar="MODEL")
    _add_train_vae_parser(models)
    _add_sample_parser(commands)
    _add_evaluate_parser(commands)
    return parser


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    model_values = {
        "z_dim": args.z_dim,
        "hidden_sizes": args.hidden,
        "likelihood": args.likelihood,
        "sigma": args.sigma,
    }
    train_values = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "objective": args.objective,
        "subset": args.subset,
    }
    given_model = {k: v for k, v in model_values.items() if v is not None}
    given_train = {k: v for k, v in train_values.items() if v is not None}
    if args.resume:
        from .runs import read_run_config

        if not (args.out / CHECKPOINT_NAME).is_file():
            raise CheckpointError(
                f"cannot resume: {args.out / CHECKPOINT_NAME} does not exist; train without --resume first"
            )
        saved = read_run_config(args.out)
        _check_unchanged(saved.model, given_model, args.out)
        _check_unchanged(saved.train, {k: v for k, v in given_train.items() if k != "epochs"}, args.out)
        return replace(
            saved, train=replace(saved.train, epochs=given_train.get("epochs", saved.train.epochs))
        )
    return RunConfig(kind="vae", model=VAEConfig(**given_model), train=TrainConfig(**given_train))


def _check_unchanged(saved, given: dict, run_dir: Path) -> None:
    for name, value in given.items():
        old = getattr(saved, name)
        if (tuple(value) if isinstance(value, list) else value) != old:
            flag = "--" + ("hidden" if name == "hidden_sizes" else name.replace("_", "-"))
            shown = " ".join(map(str, old)) if isinstance(old, tuple) else old
            raise ConfigError(
                f"the run in {run_dir} was trained with {flag} {shown}; drop {flag} to resume it, "
                f"or train a new run in another --out"
            )


def _cmd_train_vae(args: argparse.Namespace) -> int:
    from .runs import train_vae_run
    from .train import resolve_device

    config = _config_from_args(args)
    device = resolve_device(args.device)
    print(
        f"training a VAE on {device} into {args.out}: z_dim={config.model.z_dim} "
        f"hidden={list(config.model.hidden_sizes)} likelihood={config.model.likelihood} "
        f"epochs={config.train.epochs} batch={config.train.batch_size}",
        flush=True,
    )
    _, history = train_vae_run(
        config,
        args.out,
        data_dir=args.data_dir,
        device=device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if history.epochs:
        print(f"final validation ELBO {history.valid_elbo[-1]:.2f} nats/image; outputs in {args.out}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .runs import load_vae_run, save_sample_grid
    from .train import resolve_device

    _, vae = load_vae_run(args.run_dir, device=resolve_device(args.device))
    out = args.out or args.run_dir / "samples.png"
    save_sample_grid(vae, out, num_images=args.num, seed=args.seed)
    print(f"wrote {args.num} samples to {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_write_json
    from .runs import evaluate_vae_run
    from .train import resolve_device

    report, _ = evaluate_vae_run(
        args.run_dir,
        num_samples=args.num_samples,
        split=args.split,
        subset=args.subset,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        compute_khat=not args.no_khat,
        data_dir=args.data_dir,
        device=resolve_device(args.device),
        progress=not args.no_progress,
    )
    out = args.out or args.run_dir / "eval.json"
    atomic_write_json(out, report)
    r = report
    print(
        f"{r['split']} split, {r['num_images']} images, K={r['num_samples']}:\n"
        f"  log p(x) >= {r['log_likelihood']:.2f} nats/image (Monte Carlo se {r['log_likelihood_se']:.3f}, "
        f"se over images {r['log_likelihood_se_images']:.2f})\n"
        f"  ELBO        {r['elbo']:.2f} nats/image; gap = KL(Q(z|X) || P(z|X)) ~ {r['gap']:.2f}\n"
        f"  rate KL(Q(z|X) || P(z)) {r['rate']:.2f}, distortion -E log P(X|z) {r['distortion']:.2f}\n"
        f"  ESS/K {r['ess_fraction']:.3f}; k-hat > 0.7 for {100 * r['khat_over_0_7']:.1f}% of images\n"
        f"wrote {out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except PyroVAEError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; finished epochs are in the run folder's checkpoint "
            "(continue with --resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
