"""Run folders: train a configured model into a folder, reload it, evaluate it, draw its figures.

A run folder holds ``config.json`` (the :class:`~pyro_vae.builders.RunConfig`), ``checkpoint.pt``,
``metrics.json`` and the figures ``samples.png``, ``reconstructions.png`` and ``elbo.png``. These
functions are what the command line calls; notebooks can call them too.

How MNIST becomes model arguments depends on the run's kind, and is kept in one small *task*
object per kind (:data:`TASKS`): the VAE scores whole images; the CVAE and the regressor score
the other 27 columns Y given one column X (tutorial section 5).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from .builders import RunConfig, build_likelihood, build_model
from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint
from .data import binarize, fixed_binarization, load_mnist, split_column
from .distributed import DistributedContext
from .errors import CheckpointError, ConfigError
from .estimators import ImportanceSamplingSummary
from .evaluation import evaluate_importance_sampling, split_report
from .plotting import save_completion_figure, save_elbo_curves, save_image_grid
from .run_folder import run_folder_lock, writing_into
from .train import METRICS_NAME, TrainHistory, resolve_device, seed_everything, train
from .train_state import list_snapshots

CONFIG_NAME = "config.json"
NUM_FIGURE_SAMPLES = 100
FIGURE_SEED = 0
WEIGHTS = ("best", "last")


class ImageTask:
    """The VAE's data: whole images, binarized for a binary likelihood, grayscale otherwise."""

    def batch_transform(self, config: RunConfig, likelihood) -> Callable:
        """Dynamic binarization of every training batch for a binary likelihood."""
        if not likelihood.binary_data:
            return lambda x: (x,)
        return lambda x: (binarize(x),)

    def eval_arguments(
        self, config: RunConfig, images: torch.Tensor, binary: torch.Tensor, likelihood
    ) -> tuple:
        """Fixed arguments from intensities ``images`` and one seeded binarization ``binary``."""
        return (binary,) if likelihood.binary_data else (images,)

    def write_figures(self, model: nn.Module, config: RunConfig, out_dir: Path, valid_args: tuple) -> None:
        save_sample_grid(model, out_dir / "samples.png")
        originals = valid_args[0][:50]
        # Rows alternate: ten validation images, then their reconstructions f(mu(x)).
        pairs = torch.stack(
            [originals.reshape(5, 10, -1), model.reconstruct(originals).reshape(5, 10, -1)], 1
        )
        save_image_grid(
            out_dir / "reconstructions.png",
            pairs.reshape(100, -1),
            num_columns=10,
            title="rows 1,3,5,...: validation images; rows 2,4,6,...: f(mu(x))",
        )


class CompletionTask:
    """The CVAE's and regressor's data: X = one column (always binarized, resampled every time the
    digit is seen, as in the tutorial), Y = the other 27 columns (binarized for a binary likelihood)."""

    def __init__(self, num_samples: int, label: str):
        self.num_samples = num_samples  # completions per digit in the run's figures
        self.label = label

    def batch_transform(self, config: RunConfig, likelihood) -> Callable:
        column = config.model.column

        def binarize_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = split_column(images, column)
            return binarize(x), (binarize(y) if likelihood.binary_data else y)

        return binarize_batch

    def eval_arguments(
        self, config: RunConfig, images: torch.Tensor, binary: torch.Tensor, likelihood
    ) -> tuple:
        x, y_binary = split_column(binary, config.model.column)
        return x, (y_binary if likelihood.binary_data else split_column(images, config.model.column)[1])

    def completion_rows(
        self, model: nn.Module, x: torch.Tensor, num_samples: int
    ) -> list[tuple[str, torch.Tensor]]:
        """Labelled completions of the inputs ``x``: CVAE samples, or the regressor's one prediction."""
        num = num_samples if self.num_samples > 1 else 1  # a regressor's outputs are all the same
        completions = model.complete(x, num)  # (num, B, y_dim)
        return [(f"{self.label} {s + 1}" if num > 1 else self.label, completions[s]) for s in range(num)]

    def write_figures(self, model: nn.Module, config: RunConfig, out_dir: Path, valid_args: tuple) -> None:
        x, y = valid_args[0][:10], valid_args[1][:10]
        column = config.model.column
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(FIGURE_SEED)
            rows = self.completion_rows(model, x, self.num_samples)
        save_completion_figure(
            out_dir / "samples.png",
            x,
            [*rows, ("ground truth", y)],
            column,
            title=f"{config.kind}: completions of validation digits from column {column}",
        )
        save_completion_figure(
            out_dir / "reconstructions.png",
            x,
            [rows[0], ("ground truth", y)],
            column,
            title="first completion against the ground truth",
        )


TASKS = {
    "vae": ImageTask(),
    "cvae": CompletionTask(num_samples=5, label="CVAE sample"),
    "regressor": CompletionTask(num_samples=1, label="regressor"),
}


def load_training_data(config: RunConfig, *, data_dir=None, device: torch.device | str = "cpu"):
    """Training tensors, validation arguments, and the per-batch transform of a run.

    Training batches are transformed afresh every step (dynamic binarization); the validation
    split is binarized once, with ``config.train.eval_seed``. The data are checked against the
    likelihood's support before any training starts.
    """
    task = TASKS[config.kind]
    likelihood = build_likelihood(config)
    train_images = load_mnist(
        "train", data_dir, subset=config.train.subset, device=device, data_split=config.train.data_split
    ).images
    valid_args = load_eval_data(config, "valid", data_dir=data_dir, device=device)
    transform = task.batch_transform(config, likelihood)
    likelihood.check_data(transform(train_images[:100])[-1])
    likelihood.check_data(valid_args[-1])
    return (train_images,), valid_args, transform


def load_eval_data(
    config: RunConfig, split: str, *, subset: int | None = None, data_dir=None, device="cpu"
) -> tuple[torch.Tensor, ...]:
    """The arguments a run is scored with on ``split``: one seeded binarization where binary data are needed.

    The seed is the run's ``eval_seed``, so every evaluation of every model with the same seed
    sees the same binary digits. The CVAE's column input is always binarized (the task of section
    5); its targets only for a binary likelihood.
    """
    images = load_mnist(
        split, data_dir, subset=subset, device=resolve_device(device), data_split=config.train.data_split
    ).images
    binary = fixed_binarization(images, config.train.eval_seed)
    return TASKS[config.kind].eval_arguments(config, images, binary, build_likelihood(config))


def prepare_run_folder(out_dir: Path, config: RunConfig, *, resume: bool) -> RunConfig:
    """Check the folder against ``resume`` and return the configuration to train with.

    Without ``resume`` a folder that already holds a checkpoint is refused (never overwrite a
    run). With ``resume`` the saved model and training settings win; only ``epochs`` may grow.
    """
    checkpoint = out_dir / CHECKPOINT_NAME
    if not resume:
        if checkpoint.exists():
            raise ConfigError(
                f"{out_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        return config
    if not checkpoint.exists():
        raise CheckpointError(f"cannot resume: {checkpoint} does not exist; train without --resume first")
    return resumed_config(
        read_run_config(out_dir), out_dir, kind=config.kind, train={"epochs": config.train.epochs}
    )


def resumed_config(
    saved: RunConfig,
    run_dir: Path,
    *,
    kind: str,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    plugins: tuple[str, ...] | None = None,
    flags: dict[str, str] | None = None,
    hint: str | None = None,
) -> RunConfig:
    """The configuration that continues the run ``saved`` in ``run_dir``: the one resume check.

    ``model`` and ``train`` hold the settings asked for (field -> value; the command line passes
    only the flags given, a study its whole configuration): each must equal the saved one, except
    ``epochs``, the total to train to (and a cosine schedule fixes even that). ``flags`` names a
    field's command-line flag in the message; ``hint`` says what to do instead (default: drop the
    flag or train into another folder).

    Raises
    ------
    ConfigError
        One line naming the first setting that differs.
    """
    if saved.kind != kind:
        raise ConfigError(
            f"{run_dir} holds a {saved.kind!r} run; resume it with 'pyro-vae train {saved.kind}'"
        )
    flags = flags or {}
    for section, asked in (
        ("model", model or {}),
        ("train", {k: v for k, v in (train or {}).items() if k != "epochs"}),
    ):
        for name, value in asked.items():
            old = getattr(getattr(saved, section), name)
            if (tuple(value) if isinstance(value, list) else value) != old:
                flag = "--" + flags.get(name, name).replace("_", "-")
                shown = " ".join(map(str, old)) if isinstance(old, tuple) else old
                raise ConfigError(
                    f"the run in {run_dir} was trained with {flag} {shown}; "
                    + (hint or f"drop {flag} to resume it, or train a new run in another --out")
                )
    if plugins and tuple(plugins) != saved.plugins:
        raise ConfigError(
            f"the run in {run_dir} was trained with the plugins {list(saved.plugins)}; "
            + (hint or "drop --plugin to resume it (config.json imports them)")
        )
    epochs = (train or {}).get("epochs", saved.train.epochs)
    if saved.train.lr_schedule == "cosine" and epochs != saved.train.epochs:
        raise ConfigError(
            f"the run in {run_dir} decays its learning rate by a cosine over {saved.train.epochs} epochs; "
            f"resume it with --epochs {saved.train.epochs}"
        )
    return replace(saved, train=replace(saved.train, epochs=epochs))


def read_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The :class:`RunConfig` of a run folder (from ``config.json``, else from the checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; make one with 'pyro-vae train'")
    path = run_dir / CONFIG_NAME
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    else:
        values = load_checkpoint(run_dir / CHECKPOINT_NAME).get("config", {})
    return RunConfig.from_dict(values)


def read_run_history(run_dir: str | os.PathLike) -> TrainHistory:
    """The per-epoch history of a run folder (training or exported), from its checkpoint."""
    return TrainHistory(**load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)["history"])


def train_run(
    config: RunConfig,
    out_dir: str | os.PathLike,
    *,
    data_dir=None,
    device: torch.device | str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    distributed: DistributedContext | None = None,
    snapshot_epochs: Collection[int] = (),
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[nn.Module, TrainHistory]:
    """Train the model of ``config`` into ``out_dir`` and write its figures; return model and history.

    A folder that already holds a run is refused unless ``resume`` (continue it) or
    ``overwrite`` (delete its run files first: what re-running a notebook cell wants). With
    ``distributed`` (a ``torchrun`` job) every rank trains its shard and only rank 0 writes.
    The writing process holds the folder's lock (:func:`~pyro_vae.run_folder.run_folder_lock`)
    throughout: a second writer is refused with the holder's pid. ``snapshot_epochs``: see
    :func:`~pyro_vae.train.train`.
    """
    if resume and overwrite:
        raise ConfigError("resume continues a run and overwrite replaces it; choose one")
    if not resume:
        build_model(config)  # an extension's bad options fail here, before a folder is made
    writes_files = distributed is None or distributed.is_main
    with run_folder_lock(out_dir) if writes_files else contextlib.nullcontext():
        if overwrite and writes_files:
            remove_run_files(Path(out_dir))
        return _train_run_unlocked(
            config, Path(out_dir), data_dir=data_dir, device=device, resume=resume,
            distributed=distributed, snapshot_epochs=snapshot_epochs, progress=progress, log=log,
        )  # fmt: skip


def _train_run_unlocked(
    config: RunConfig, out_dir: Path, *, data_dir, device, resume: bool, distributed, snapshot_epochs,
    progress: bool, log,
) -> tuple[nn.Module, TrainHistory]:  # fmt: skip
    config = prepare_run_folder(out_dir, config, resume=resume)
    writes_files = distributed is None or distributed.is_main
    device = resolve_device(device)
    train_data, valid_args, batch_transform = load_training_data(config, data_dir=data_dir, device=device)
    if writes_files:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / CONFIG_NAME, config.to_dict())
    seed_everything(config.train.seed)  # the initial weights follow the seed too
    model = build_model(config)
    if config.train.init_output_bias:
        init_output_bias(model, config, train_data[0])
    pyro.clear_param_store()  # a fresh store for this model's pyro.module names (see train())
    history = train(
        model, train_data, valid_args, config.train, batch_transform=batch_transform, device=device,
        run_dir=out_dir, config=config.to_dict(), resume=resume, distributed=distributed,
        clear_param_store=False, snapshot_epochs=snapshot_epochs, progress=progress, log=log,
    )  # fmt: skip
    model.eval()
    if writes_files:
        with writing_into(out_dir):
            TASKS[config.kind].write_figures(model, config, out_dir, valid_args)
            save_elbo_curves(out_dir / "elbo.png", history.train_elbo, history.valid_elbo)
    return model, history


#: The files a training run writes into its folder (what ``overwrite`` removes; nothing else is).
RUN_FILES = (CONFIG_NAME, CHECKPOINT_NAME, METRICS_NAME, "eval.json", "samples.png", "reconstructions.png",
             "elbo.png")  # fmt: skip


def remove_run_files(out_dir: Path) -> None:
    """Delete the files a run wrote into ``out_dir`` (other files stay)."""
    with writing_into(out_dir):
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for _, path in list_snapshots(out_dir):
            path.unlink()


def init_output_bias(model: nn.Module, config: RunConfig, train_images: torch.Tensor) -> None:
    """Set a VAE decoder's output bias to the logit of the training images' mean intensity."""
    decoder = getattr(model, "decoder", None)
    if config.kind != "vae" or not decoder.init_output_bias(train_images.mean(0)):
        raise ConfigError(
            f"--init-output-bias needs a VAE whose likelihood's mean is sigmoid(output); "
            f"this is a {config.kind} run with likelihood {getattr(config.model, 'likelihood', '?')!r}"
        )


def load_run(
    run_dir: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    weights: str = "best",
    kinds: tuple[str, ...] | None = None,
) -> tuple[RunConfig, nn.Module]:
    """Rebuild the model of a run folder on ``device``, in eval mode.

    ``weights="best"`` loads the epoch with the highest validation ELBO (model selection on the
    validation split), ``"last"`` the final epoch. ``kinds`` restricts the accepted run kinds.
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if kinds is not None and config.kind not in kinds:
        raise ConfigError(f"{run_dir} holds a {config.kind!r} run; this needs a {' or '.join(kinds)} run")
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    model = build_model(config)
    try:
        model.load_state_dict(selected_weights(state, weights)[0])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"the checkpoint in {run_dir} does not match its config ({error})") from None
    return config, model.to(resolve_device(device)).eval()


def selected_weights(state: dict, weights: str) -> tuple[dict, str]:
    """The state dict for ``weights`` and a description such as ``"best (epoch 51 of 76)"``.

    An exported folder (:func:`~pyro_vae.export.export_run`) holds one set of weights, which
    answers both ``"best"`` and ``"last"``; its description says which epoch they came from.
    """
    exported = state.get("exported")
    if exported is not None:
        origin = f"epoch {exported['epoch']} of {exported['of_epochs']}"
        stored = "" if exported.get("dtype", "float32") == "float32" else f", stored as {exported['dtype']}"
        return state["model_state"], f"{exported['weights']} ({origin}; exported weights only{stored})"
    history = TrainHistory(**state["history"])
    if weights == "best" and state.get("best_model_state") is not None:
        return state["best_model_state"], f"best (epoch {history.best_epoch} of {state['epoch']})"
    if weights == "best":
        return state[
            "model_state"
        ], f"last (epoch {state['epoch']}; the checkpoint holds no best-epoch weights)"
    return state["model_state"], f"last (epoch {state['epoch']})"


def describe_weights(run_dir: str | os.PathLike, weights: str = "best") -> str:
    """Which epoch's weights :func:`load_run` loads for ``weights``, in words."""
    return selected_weights(load_checkpoint(Path(run_dir) / CHECKPOINT_NAME), weights)[1]


def load_vae_run(run_dir: str | os.PathLike, *, device: torch.device | str = "cpu", weights: str = "best"):
    """:func:`load_run` for VAE runs only."""
    return load_run(run_dir, device=device, weights=weights, kinds=("vae",))


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 5000,
    split: str = "test",
    subset: int | None = None,
    batch_size: int = 100,
    chunk_size: int | None = None,
    compute_khat: bool = True,
    weights: str = "best",
    data_dir=None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[dict, ImportanceSamplingSummary]:
    """Importance-sampling evaluation of a run folder: the ``eval.json`` report and per-datapoint values.

    Works for every kind (for the regressor, which has no latent variable, the estimate is exact
    for any K). Particles are seeded with the run's ``eval_seed``, so repeated evaluations agree.

    The defaults are the published protocol: K = 5,000 particles on all 10,000 test images,
    which for the tutorial's network took 42 minutes on one CPU thread here (README, "Honest
    likelihoods"). For a quick look in a notebook pass ``subset`` and a smaller ``num_samples``
    (500 images at K = 100 take seconds).
    """
    device = resolve_device(device)
    config, model = load_run(run_dir, device=device, weights=weights)
    data = load_eval_data(config, split, subset=subset, data_dir=data_dir, device=device)
    return score_loaded_run(
        config, model, data, num_samples=num_samples, split=split, weights=weights, device=device,
        batch_size=batch_size, chunk_size=chunk_size, compute_khat=compute_khat, progress=progress,
    )  # fmt: skip


def score_loaded_run(
    config: RunConfig,
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    *,
    num_samples: int,
    split: str,
    weights: str,
    device: torch.device | str,
    batch_size: int = 100,
    chunk_size: int | None = None,
    compute_khat: bool = True,
    progress: bool = True,
) -> tuple[dict, ImportanceSamplingSummary]:
    """:func:`evaluate_run` for a run already loaded (:func:`load_run`, :func:`load_eval_data`).

    ``split``, ``weights`` and ``device`` say what was loaded where; they go into the report.
    Seeds the particles with the run's ``eval_seed``, as :func:`evaluate_run` does.
    """
    seed_everything(config.train.eval_seed)
    started = time.perf_counter()
    summary = evaluate_importance_sampling(
        model, data, num_samples=num_samples, batch_size=batch_size, chunk_size=chunk_size,
        compute_khat=compute_khat, progress=progress,
    )  # fmt: skip
    report = split_report(summary, num_samples=num_samples)
    report.update(
        kind=config.kind,
        split=split,
        weights=weights,
        eval_seed=config.train.eval_seed,
        seconds=time.perf_counter() - started,
        device=str(device),
    )
    return report, summary


def save_sample_grid(
    vae: nn.Module, path: str | os.PathLike, *, num_images: int = NUM_FIGURE_SAMPLES, seed: int = FIGURE_SEED
) -> None:
    """Decoder means f(z), z ~ P(z), on a grid: the tutorial's Fig. 7. Leaves the global RNG as it was."""
    device = next(vae.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        images = vae.sample_images(num_images)
    save_image_grid(path, images, num_columns=10, title="f(z), z ~ N(0, I)")
