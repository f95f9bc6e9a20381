"""Command line: ``pyro-vae train {vae,cvae,regressor}``, ``sample``, ``evaluate``, ``complete``.

argparse lives here and only here; library functions take explicit keyword arguments. Errors the
user can fix (:class:`~pyro_vae.errors.PyroVAEError`) are printed as one argparse-style line with
exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .builders import (
    CONDITIONAL_PRIORS,
    GUIDES,
    LIKELIHOODS,
    MODEL_KINDS,
    PRESETS,
    PRIORS,
    RunConfig,
    TrainConfig,
)
from .checkpoint import CHECKPOINT_NAME
from .cli_options import (
    add_device_and_data_flags,
    add_optimization_flags,
    column_index,
    non_negative_int,
    option_pair,
    positive_float,
    positive_int,
    snapshot_spec,
)
from .cli_readers import add_reader_commands
from .data import DATA_SPLITS, IMAGE_SIDE, MIDDLE_COLUMN
from .errors import CheckpointError, PyroVAEError
from .nets import ACTIVATIONS
from .plugins import import_plugins, load_entry_point_plugins
from .schedules import IWAE_SCHEDULE_EPOCHS
from .train_state import log_spaced_epochs

PROG = "pyro-vae"

#: Per model kind: configuration field -> the argparse destination of its flag.
MODEL_FLAGS = {
    "vae": {
        "z_dim": "z_dim",
        "hidden_sizes": "hidden",
        "likelihood": "likelihood",
        "sigma": "sigma",
        "sigma_per_pixel": "sigma_per_pixel",
        "prior": "prior",
        "prior_scale": "prior_scale",
        "num_components": "num_components",
        "activation": "activation",
        "guide": "guide",
        "flow_layers": "flow_layers",
        "likelihood_options": "likelihood_option",
        "prior_options": "prior_option",
        "guide_options": "guide_option",
    },  # fmt: skip
    "cvae": {"z_dim": "z_dim", "hidden_sizes": "hidden", "column": "column", "prior": "prior"},
    "regressor": {"hidden_sizes": "hidden", "column": "column"},
}
PRIOR_CHOICES = {"vae": PRIORS, "cvae": CONDITIONAL_PRIORS}
PRIOR_HELP = {
    "vae": "standard N(0, I) (default), scaled N(0, lambda^2 I), mixture (learnable mixture of Gaussians), "
    "vamp (VampPrior)",
    "cvae": "standard: P(z|X) = N(0, I) as in the tutorial (default); conditional: a learned P(z|X) "
    "(Sohn et al., 2015)",
}
TRAIN_FLAGS = (
    "epochs", "batch_size", "lr", "seed", "objective", "subset", "num_particles", "lr_schedule",
    "kl_warmup", "adam_betas", "adam_eps", "patience", "init_output_bias", "lr_milestones", "lr_decay",
    "clip_grad_norm", "data_split",
)  # fmt: skip
DESCRIPTIONS = {
    "vae": "Train a VAE (tutorial section 4.1) on MNIST with SVI.",
    "cvae": "Train the CVAE of sections 3 and 5: complete a digit (the other 27 columns, Y) from its "
    "stochastically binarized middle column (X), with SVI.",
    "regressor": "Train the regressor baseline of section 5: the CVAE's networks without z, by maximum "
    "likelihood (SVI with an empty guide) on the same task.",
}


def _add_train_parser(subparsers, kind: str) -> None:
    p = subparsers.add_parser(
        kind, help=DESCRIPTIONS[kind].split(":")[0].rstrip("."),
        description=DESCRIPTIONS[kind] + " Writes a run folder: config.json, checkpoint.pt, metrics.json, "
        "samples.png, reconstructions.png, elbo.png.",
    )  # fmt: skip
    # Model and training flags default to None so that --resume can tell given flags from
    # defaults; the defaults themselves live in the configuration dataclasses.
    p.add_argument("--epochs", type=non_negative_int, help=f"total epochs (default {TrainConfig.epochs})")
    p.add_argument("--batch-size", type=positive_int, help=f"default {TrainConfig.batch_size}")
    if "z_dim" in MODEL_FLAGS[kind]:
        p.add_argument("--z-dim", type=positive_int, help="latent dimensions (default 30)")
    p.add_argument(
        "--hidden",
        type=positive_int,
        nargs="+",
        metavar="H",
        help="encoder hidden sizes; the decoder mirrors them (default 1000 500 250)",
    )
    if "likelihood" in MODEL_FLAGS[kind]:
        p.add_argument(
            "--likelihood",
            choices=list(LIKELIHOODS),
            help="bernoulli: dynamically binarized pixels (default); on grayscale intensities: gaussian "
            "N(f(z), sigma^2 I), gaussian-learned (sigma learned), continuous-bernoulli, laplace",
        )
        p.add_argument(
            "--sigma",
            type=positive_float,
            help="gaussian: the standard deviation; gaussian-learned: its initial value (default 0.1); "
            "the laplace likelihood's scale is --likelihood-option scale=B (default 0.1)",
        )
        p.add_argument(
            "--sigma-per-pixel",
            action="store_true",
            default=None,
            help="gaussian-learned: learn one sigma per pixel instead of one shared",
        )
    if "prior" in MODEL_FLAGS[kind]:
        p.add_argument("--prior", choices=list(PRIOR_CHOICES[kind]), help=PRIOR_HELP[kind])
    if "prior_scale" in MODEL_FLAGS[kind]:
        p.add_argument("--prior-scale", type=positive_float, help="lambda of the scaled prior (default 1)")
        p.add_argument(
            "--num-components",
            type=positive_int,
            help="mixture components or VampPrior pseudo-inputs (default 10)",
        )
    if "column" in MODEL_FLAGS[kind]:
        p.add_argument(
            "--column",
            type=column_index,
            help=f"the input column X, 0..{IMAGE_SIDE - 1} (default {MIDDLE_COLUMN})",
        )
    if "activation" in MODEL_FLAGS[kind]:
        p.add_argument(
            "--activation", choices=list(ACTIVATIONS), help="hidden-layer nonlinearity (default relu)"
        )
    if "guide" in MODEL_FLAGS[kind]:
        p.add_argument(
            "--guide", choices=list(GUIDES),
            help="the family of Q(z|x): gaussian (diagonal, the tutorial's; default), full-cov (a Cholesky "
            "factor per image), iaf (inverse autoregressive flow on the diagonal Gaussian)",
        )  # fmt: skip
        p.add_argument("--flow-layers", type=positive_int, help="iaf: autoregressive transforms (default 2)")
    if kind == "vae":
        p.add_argument(
            "--preset",
            choices=list(PRESETS),
            help="a published recipe; flags given beside it override its values. iwae-1layer: Burda et al. "
            "(2016), Table 1: 784-200-200-50 tanh, Bernoulli, batch 20, Adam eps 1e-4, the iwae schedule "
            f"({IWAE_SCHEDULE_EPOCHS} epochs), output bias at the logit of the training mean",
        )
    for axis in ("likelihood", "prior", "guide"):
        if f"{axis}_options" in MODEL_FLAGS[kind]:
            p.add_argument(
                f"--{axis}-option", type=option_pair, action="append", metavar="KEY=VALUE",
                help=f"a setting of the {axis} (repeatable), passed to its factory and kept in config.json",
            )  # fmt: skip
    p.add_argument(
        "--plugin", action="append", metavar="MODULE",
        help="import MODULE first (repeatable): it registers extensions (pyro_vae.register_likelihood, "
        "register_prior, register_guide); config.json records it so every later command imports it too",
    )  # fmt: skip
    add_optimization_flags(p)
    p.add_argument("--subset", type=positive_int, help="train on the first N training images only")
    p.add_argument(
        "--data-split", choices=list(DATA_SPLITS),
        help="standard: 50,000 training / 10,000 validation images (default); iwae: 59,600 / the last 400 "
        "(Burda et al., 2016)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, help=f"default {TrainConfig.seed}")
    add_device_and_data_flags(p)
    p.add_argument("--out", type=Path, default=Path(f"runs/{kind}"), help=f"run folder (default runs/{kind})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --epochs")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (its run files are deleted first)"
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training on torch.distributed; launch with 'torchrun --nproc_per_node N "
        "-m pyro_vae.cli train ...' (gloo on CPU, nccl on CUDA; --batch-size is per rank)",
    )
    p.add_argument(
        "--snapshots", type=snapshot_spec, default=(), metavar="EPOCHS",
        help="also keep the weights of these epochs in --out/snapshots/ (for learning curves of log p-hat): "
        "'log' (1, 2, 5, 10, 20, 50, ... and the last) or a comma list; not part of the run's settings",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Pyro VAEs from Doersch's tutorial.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a model", description="Train a model into a run folder.")
    models = train.add_subparsers(dest="model_kind", required=True, metavar="MODEL")
    for kind in MODEL_FLAGS:
        _add_train_parser(models, kind)
    add_reader_commands(commands)
    return parser


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    kind = args.model_kind
    given_model = {
        f: getattr(args, dest) for f, dest in MODEL_FLAGS[kind].items() if getattr(args, dest) is not None
    }
    given_model = {f: dict(v) if f.endswith("_options") else v for f, v in given_model.items()}
    given_train = {f: getattr(args, f) for f in TRAIN_FLAGS if getattr(args, f) is not None}
    plugins = tuple(args.plugin or ())
    preset = PRESETS.get(getattr(args, "preset", None) or "", {})
    given_model = {**preset.get("model", {}), **given_model}
    given_train = {**preset.get("train", {}), **given_train}
    if args.resume:
        from .runs import read_run_config, resumed_config

        if not (args.out / CHECKPOINT_NAME).is_file():
            raise CheckpointError(
                f"cannot resume: {args.out / CHECKPOINT_NAME} does not exist; train without --resume first"
            )
        return resumed_config(
            read_run_config(args.out), args.out, kind=kind, model=given_model, train=given_train,
            plugins=plugins, flags=MODEL_FLAGS[kind],
        )  # fmt: skip
    model_config = MODEL_KINDS[kind][0](**given_model)
    return RunConfig(kind=kind, model=model_config, train=TrainConfig(**given_train), plugins=plugins)


def _cmd_train(args: argparse.Namespace) -> int:
    from .runs import train_run
    from .train import resolve_device

    config = _config_from_args(args)
    device = resolve_device(args.device)
    context = None
    if args.distributed:
        from .distributed import init_from_environment

        context, device = init_from_environment(device.type)
    is_main = context is None or context.is_main
    values = config.model.to_dict()
    settings = " ".join(f"{name}={values[name]}" for name in MODEL_FLAGS[config.kind])
    if is_main:
        ranks = f" x {context.world_size} ranks" if context else ""
        print(
            f"training a {config.kind} on {device}{ranks} into {args.out}: {settings} "
            f"epochs={config.train.epochs} batch={config.train.batch_size} objective={config.train.objective}"
            + (f" K={config.train.num_particles}" if config.train.num_particles > 1 else "")
            + (f" lr_schedule={config.train.lr_schedule}" if config.train.lr_schedule != "none" else ""),
            flush=True,
        )
    try:
        _, history = train_run(
            config,
            args.out,
            data_dir=args.data_dir,
            device=device,
            resume=args.resume,
            overwrite=args.overwrite,
            distributed=context,
            snapshot_epochs=(
                log_spaced_epochs(config.train.epochs) if args.snapshots == "log" else args.snapshots
            ),
            progress=not args.no_progress,
        )
        if context is not None:
            from .distributed import barrier

            barrier()  # rank 0 writes the figures last: no rank tears the group down before it is done
    finally:
        if context is not None:
            from .distributed import shutdown

            shutdown()
    if history.epochs and is_main:
        print(
            f"final validation ELBO {history.valid_elbo[-1]:.2f} nats/image "
            f"(best {max(history.valid_elbo):.2f} at epoch {history.best_epoch}); outputs in {args.out}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Extensions register names that the flags' choices must already list.
        load_entry_point_plugins()
        import_plugins(_plugin_arguments(argv))
    except PyroVAEError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except PyroVAEError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the command writes: a file where a folder should be, a full disk
        where = f" ({error.filename})" if error.filename else ""
        print(f"{PROG}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; finished epochs are in the run folder's checkpoint "
            "(continue with --resume)",
            file=sys.stderr,
        )
        return 130


def _plugin_arguments(argv: list[str]) -> list[str]:
    """The values of ``--plugin M`` and ``--plugin=M`` in ``argv``, before argparse sees it."""
    found = []
    for i, token in enumerate(argv):
        if token == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif token.startswith("--plugin="):
            found.append(token.split("=", 1)[1])
    return found


if __name__ == "__main__":
    sys.exit(main())
