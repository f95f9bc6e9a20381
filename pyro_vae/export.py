"""Export a run's chosen weights as a small run folder for sharing (``pyro-vae export``).

A training checkpoint carries what resuming needs: the last and the best weights, Adam's two
moment estimates (twice the weights again), the schedule and every generator. Someone who only
wants to evaluate or sample a model needs the configuration and one set of weights, about a
quarter of that. An exported folder holds ``config.json``, ``metrics.json`` (the training
history, for learning curves) and a ``checkpoint.pt`` with those weights only. Everything that
loads a run (``load_run``, ``pyro-vae evaluate``, ``sample``, ``complete``, the studies) loads it
unchanged; resuming it is refused, since the optimizer's state is not in it.

``dtype="float16"`` stores the weights at half precision (half the size again: the tutorial's
network is 11 MB in float32); they load into the float32 model, rounded to 11 significant bits.
Numbers reported for such a folder must be computed from it, not from the run it came from.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint, save_checkpoint
from .errors import ConfigError
from .run_folder import make_run_folder, writing_into
from .runs import CONFIG_NAME, read_run_config, selected_weights
from .train_state import METRICS_NAME, TrainHistory

#: Storage precisions an export offers (the loaded model is float32 either way).
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def export_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, weights: str = "best", dtype: str = "float32"
) -> Path:
    """Write the ``weights`` (``"best"`` or ``"last"``) of the run in ``run_dir`` to ``out_dir``.

    Parameters
    ----------
    run_dir : path
        A run folder written by ``pyro-vae train`` (or an exported one).
    out_dir : path
        A new folder, or an existing one that holds no run yet.
    weights : {"best", "last"}
        ``best``: the epoch with the highest validation ELBO; ``last``: the final epoch.
    dtype : {"float32", "float16"}
        Precision of the stored floating-point tensors.

    Returns
    -------
    Path
        ``out_dir/checkpoint.pt``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    config = read_run_config(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    model_state, _ = selected_weights(state, weights)
    history = TrainHistory(**state["history"])
    if (out_dir / CHECKPOINT_NAME).exists():
        raise ConfigError(f"{out_dir} already holds a run; choose another folder or delete it first")
    exported = state.get("exported")  # exporting an export keeps what it says
    if exported is None:
        best = weights == "best" and state.get("best_model_state") is not None
        epoch = history.best_epoch if best else state["epoch"]
        exported = {
            "weights": "best" if best else "last",
            "epoch": epoch,
            "of_epochs": state["epoch"],
            "valid_elbo": history.valid_elbo[epoch - 1] if epoch > 0 else None,
        }
    # float16 values stay float16-rounded when an export is exported again at float32
    exported = {**exported, "dtype": dtype if dtype != "float32" else exported.get("dtype", "float32")}
    make_run_folder(out_dir)
    with writing_into(out_dir):
        atomic_write_json(out_dir / CONFIG_NAME, config.to_dict())
        atomic_write_json(out_dir / METRICS_NAME, history.metrics())
        save_checkpoint(
            out_dir / CHECKPOINT_NAME,
            {
                "config": config.to_dict(),
                "epoch": state["epoch"],
                "model_state": {name: _stored(value, dtype) for name, value in model_state.items()},
                "best_model_state": None,
                "history": history.to_dict(),
                "exported": exported,
            },
        )
    return out_dir / CHECKPOINT_NAME


def _stored(value: torch.Tensor, dtype: str) -> torch.Tensor:
    """A copy of one tensor of the state dict, floating-point ones at the export's precision."""
    return value.to(EXPORT_DTYPES[dtype]) if value.is_floating_point() else value.clone()
