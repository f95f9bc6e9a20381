"""Run folders: train a configured VAE into a folder, reload it, write its figures.

A run folder holds ``config.json`` (the :class:`~pyro_vae.builders.RunConfig`), ``checkpoint.pt``,
``metrics.json`` and the figures ``samples.png``, ``reconstructions.png`` and ``elbo.png``. These
functions are what the command line calls; notebooks can call them too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from .builders import RunConfig, build_objective, build_vae
from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint
from .data import binarize, fixed_binarization, load_mnist
from .errors import CheckpointError, ConfigError
from .estimators import ImportanceSamplingSummary
from .evaluation import evaluate_importance_sampling, split_report
from .plotting import save_elbo_curves, save_image_grid
from .train import TrainHistory, seed_everything, train
from .vae import VAE

CONFIG_NAME = "config.json"
NUM_FIGURE_SAMPLES = 100
FIGURE_SEED = 0


def load_vae_data(config: RunConfig, *, data_dir=None, device: torch.device | str = "cpu"):
    """Training and validation tensors for a VAE run, and the per-batch transform.

    For a likelihood of binary data, the training batches are binarized afresh every step
    (dynamic binarization) and the validation split once, with ``config.train.eval_seed``.
    Continuous likelihoods see grayscale intensities. The data are checked against the
    likelihood's support before any training starts.
    """
    train_split = load_mnist("train", data_dir, subset=config.train.subset, device=device)
    likelihood = build_vae(config.model).likelihood
    (valid_images,) = load_eval_data(config, "valid", data_dir=data_dir, device=device)
    if likelihood.binary_data:
        batch_transform = _dynamic_binarization
        likelihood.check_data(binarize(train_split.images[:100]))
    else:
        batch_transform = None
        likelihood.check_data(train_split.images)
    likelihood.check_data(valid_images)
    return (train_split.images,), (valid_images,), batch_transform


def load_eval_data(
    config: RunConfig, split: str, *, subset: int | None = None, data_dir=None, device="cpu"
) -> tuple[torch.Tensor]:
    """The images a run is scored on: a fixed seeded binarization for binary likelihoods, else grayscale.

    The binarization seed is the run's ``eval_seed``, so every evaluation of every model with the
    same seed sees the same binary digits.
    """
    images = load_mnist(split, data_dir, subset=subset, device=device).images
    if build_vae(config.model).likelihood.binary_data:
        images = fixed_binarization(images, config.train.eval_seed)
    return (images,)


def _dynamic_binarization(x: torch.Tensor) -> tuple[torch.Tensor]:
    return (binarize(x),)


def prepare_run_folder(out_dir: Path, config: RunConfig, *, resume: bool) -> RunConfig:
    """Check the folder against ``resume`` and return the configuration to train with.

    Without ``resume`` a folder that already holds a checkpoint is refused (never overwrite a
    run). With ``resume`` the saved model and training settings win; only ``epochs`` may grow.
    """
    checkpoint = out_dir / CHECKPOINT_NAME
    if not resume:
        if checkpoint.exists():
            raise ConfigError(
                f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        return config
    if not checkpoint.exists():
        raise CheckpointError(f"cannot resume: {checkpoint} does not exist; train without --resume first")
    saved = read_run_config(out_dir)
    return replace(saved, train=replace(saved.train, epochs=config.train.epochs))


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


def train_vae_run(
    config: RunConfig,
    out_dir: str | os.PathLike,
    *,
    data_dir=None,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[VAE, TrainHistory]:
    """Train the VAE of ``config`` into ``out_dir`` and write its figures; return model and history."""
    out_dir = Path(out_dir)
    config = prepare_run_folder(out_dir, config, resume=resume)
    device = torch.device(device)
    train_data, valid_data, batch_transform = load_vae_data(config, data_dir=data_dir, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / CONFIG_NAME, config.to_dict())
    seed_everything(config.train.seed)  # the initial weights follow the seed too
    vae = build_vae(config.model)
    history = train(
        vae,
        train_data,
        valid_data,
        epochs=config.train.epochs,
        batch_size=config.train.batch_size,
        lr=config.train.lr,
        seed=config.train.seed,
        loss=build_objective(config.train.objective),
        batch_transform=batch_transform,
        device=device,
        run_dir=out_dir,
        config=config.to_dict(),
        resume=resume,
        progress=progress,
        log=log,
    )
    write_vae_figures(vae, out_dir, valid_data[0], history)
    return vae, history


def load_vae_run(run_dir: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[RunConfig, VAE]:
    """Rebuild the VAE of a run folder from its checkpoint, on ``device``, in eval mode."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.kind != "vae":
        raise ConfigError(f"{run_dir} holds a {config.kind!r} run, not a VAE")
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    vae = build_vae(config.model)
    try:
        vae.load_state_dict(state["model_state"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"the checkpoint in {run_dir} does not match its config ({error})") from None
    return config, vae.to(device).eval()


def write_vae_figures(vae: VAE, out_dir: Path, valid_images: torch.Tensor, history: TrainHistory) -> None:
    """``samples.png`` (Fig. 7), ``reconstructions.png`` and ``elbo.png``, deterministic per model."""
    save_sample_grid(vae, out_dir / "samples.png")
    originals = valid_images[:50]
    # Rows alternate: ten validation images, then their reconstructions.
    pairs = torch.stack([originals.reshape(5, 10, -1), vae.reconstruct(originals).reshape(5, 10, -1)], dim=1)
    save_image_grid(
        out_dir / "reconstructions.png",
        pairs.reshape(100, -1),
        num_columns=10,
        title="rows 1,3,5,...: validation images; rows 2,4,6,...: f(mu(x))",
    )
    save_elbo_curves(out_dir / "elbo.png", history.train_elbo, history.valid_elbo)


def save_sample_grid(
    vae: VAE, path: str | os.PathLike, *, num_images: int = NUM_FIGURE_SAMPLES, seed: int = FIGURE_SEED
) -> None:
    """Decoder means f(z), z ~ P(z), on a grid: the tutorial's Fig. 7. Leaves the global RNG as it was."""
    device = next(vae.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        images = vae.sample_images(num_images)
    save_image_grid(path, images, num_columns=10, title="f(z), z ~ N(0, I)")


def evaluate_vae_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 5000,
    split: str = "test",
    subset: int | None = None,
    batch_size: int = 100,
    chunk_size: int | None = None,
    compute_khat: bool = True,
    data_dir=None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[dict, ImportanceSamplingSummary]:
    """Importance-sampling evaluation of a VAE run folder: the ``eval.json`` report and per-image values.

    Particles are seeded with the run's ``eval_seed``, so repeated evaluations agree exactly.
    """
    config, vae = load_vae_run(run_dir, device=device)
    data = load_eval_data(config, split, subset=subset, data_dir=data_dir, device=device)
    seed_everything(config.train.eval_seed)
    started = time.perf_counter()
    summary = evaluate_importance_sampling(
        vae,
        data,
        num_samples=num_samples,
        batch_size=batch_size,
        chunk_size=chunk_size,
        compute_khat=compute_khat,
        progress=progress,
    )
    report = split_report(summary, num_samples=num_samples)
    report.update(
        split=split,
        eval_seed=config.train.eval_seed,
        seconds=time.perf_counter() - started,
        device=str(device),
    )
    return report, summary
