"""Training: one function that runs SVI on any model/guide pair, with checkpoints and exact resume.

:func:`train` seeds everything, builds ``SVI(model.model, model.guide, Adam, loss)``, loops over
epochs of a device-resident dataset (one permutation per epoch, batches by slicing), reports the
train and validation ELBO per datapoint in nats, and writes an atomic checkpoint after every
epoch. Resuming restores the weights, the optimizer moments, the epoch, the history and every
random number generator, so that on the CPU "2 epochs" and "1 epoch, resume, 1 epoch" end with
identical parameters.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.infer
import pyro.optim
import torch
from torch import nn
from tqdm.auto import tqdm

from . import estimators
from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint, save_checkpoint
from .data import minibatch_indices
from .errors import CheckpointError, ConfigError, TrainingDivergedError

METRICS_NAME = "metrics.json"

#: ELBO classes whose compiled trace fixes the batch size (see :func:`train`'s ``drop_last``).
JIT_OBJECTIVES = (
    pyro.infer.JitTrace_ELBO,
    pyro.infer.JitTraceMeanField_ELBO,
    pyro.infer.JitTraceGraph_ELBO,
)


@dataclass
class TrainHistory:
    """Per-epoch numbers of a run, in nats per datapoint (ELBOs) and seconds."""

    train_elbo: list[float] = field(default_factory=list)
    valid_elbo: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_elbo)

    @property
    def best_epoch(self) -> int:
        """The epoch (1-based) with the highest validation ELBO; 0 before the first epoch."""
        if not self.valid_elbo:
            return 0
        return max(range(len(self.valid_elbo)), key=lambda i: self.valid_elbo[i]) + 1

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)

    def metrics(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: the per-epoch lists and the best validation epoch."""
        return {**self.to_dict(), "best_epoch": self.best_epoch}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def seed_everything(seed: int) -> None:
    """Seed Python's, Torch's (all devices) and Pyro's generators."""
    random.seed(seed)
    pyro.set_rng_seed(seed)  # seeds torch (CPU and CUDA), numpy and random


def _rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "data": data_generator.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_param_registration(model: nn.Module) -> None:
    """Fail loudly if SVI optimizes other tensors than the model's own parameters.

    This catches two silent bugs: a network never passed to ``pyro.module`` (its weights would
    never train), and two models whose ``pyro.module`` names collide (one model's step would
    train the other's weights).
    """
    stored = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    own = {id(p): name for name, p in model.named_parameters()}
    missing = [name for key, name in own.items() if key not in stored]
    foreign = stored - set(own)
    if missing or foreign:
        raise ConfigError(
            "the parameters SVI optimizes are not the model's own: "
            + (f"not registered with pyro.module: {missing[:5]}; " if missing else "")
            + (
                f"{len(foreign)} tensors from another model share its pyro.module names; "
                "give each model its own name"
                if foreign
                else ""
            )
        )


def evaluate_elbo(
    model: nn.Module, data: Sequence[torch.Tensor], *, batch_size: int = 1000, num_samples: int = 1
) -> float:
    """Mean per-datapoint ELBO (nats) of ``model`` on ``data``, estimated with ``num_samples`` particles."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    num = data[0].shape[0]
    for start in range(0, num, batch_size):
        batch = tuple(t[start : start + batch_size] for t in data)
        values = estimators.elbo(model.model, model.guide, *batch, num_samples=num_samples)
        total += float(values.sum())
        count += values.shape[0]
    model.train(was_training)
    return total / count


def train(
    model: nn.Module,
    train_data: Sequence[torch.Tensor],
    valid_data: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    loss: pyro.infer.ELBO | None = None,
    batch_transform: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    device: torch.device | str = "cpu",
    run_dir: str | Path | None = None,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    drop_last: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> TrainHistory:
    """Train ``model.model`` / ``model.guide`` with SVI and Adam; checkpoint every epoch.

    Parameters
    ----------
    model : nn.Module
        Has ``model(*batch)`` and ``guide(*batch)`` Pyro programs (e.g. :class:`~pyro_vae.vae.VAE`).
    train_data, valid_data : sequences of tensors
        Tensors indexed along dim 0 (e.g. ``(images,)``); a batch is ``tuple(t[idx] ...)``.
        ``valid_data`` is scored as given, so binarize it once beforehand
        (:func:`~pyro_vae.data.fixed_binarization`).
    epochs : int
        Total number of epochs; with ``resume`` training continues up to this number.
    batch_size, lr, seed
        Minibatch size, Adam learning rate and the seed of every generator.
    loss : pyro.infer.ELBO, optional
        The objective; default ``Trace_ELBO()``.
    batch_transform : callable, optional
        Applied to every training batch, e.g. dynamic binarization ``lambda x: (binarize(x),)``.
    device : torch device
        Where the model and data live during training.
    run_dir : path, optional
        Folder for ``checkpoint.pt`` and ``metrics.json``, written atomically after every epoch.
    config : dict, optional
        JSON-able description of the run, stored in the checkpoint to rebuild the model.
    resume : bool
        Continue from ``run_dir/checkpoint.pt`` (weights, optimizer, history and RNG states).
    drop_last : bool, optional
        Skip the last, smaller batch of an epoch. Default: only for JIT objectives, whose
        compiled trace is specialized to one batch size.
    progress : bool
        Show a tqdm bar with the running ELBO.
    log : callable, optional
        Receives one line per epoch; ``None`` for silence.

    Returns
    -------
    TrainHistory
        Train and validation ELBO per datapoint (nats) and seconds, one entry per epoch.

    Raises
    ------
    TrainingDivergedError
        The loss became NaN or infinite; the checkpoint of the last finished epoch is kept.

    Notes
    -----
    Pyro's parameter store is cleared first: networks are registered under names given by
    ``pyro.module``, and a stale entry of the same name from an earlier model would otherwise be
    optimized in place of this model's weights.
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    loss = loss if loss is not None else pyro.infer.Trace_ELBO()
    if drop_last is None:
        drop_last = isinstance(loss, JIT_OBJECTIVES)
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ConfigError("resume needs the run folder that holds the checkpoint")

    train_data = tuple(t.to(device) for t in train_data)
    valid_data = tuple(t.to(device) for t in valid_data)
    num_train = train_data[0].shape[0]
    if drop_last and num_train < batch_size:
        raise ConfigError(f"{num_train} training datapoints do not fill one batch of {batch_size}")

    seed_everything(seed)
    model.to(device)
    pyro.clear_param_store()
    optimizer = pyro.optim.Adam({"lr": lr})
    svi = pyro.infer.SVI(model.model, model.guide, optimizer, loss)
    data_generator = torch.Generator().manual_seed(seed)
    history = TrainHistory()
    start_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None  # weights of history.best_epoch

    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        try:
            model.load_state_dict(state["model_state"])
        except RuntimeError as error:
            raise CheckpointError(
                f"the checkpoint in {run_dir} does not fit this model ({str(error).splitlines()[0]})"
            ) from None
        model.to(device)
        optimizer.set_state(state["optimizer_state"])
        history = TrainHistory(**state["history"])
        best_state = state.get("best_model_state")  # absent in checkpoints of pyro-vae 0.1.0 runs
        start_epoch = int(state["epoch"])
        _set_rng_state(state["rng"], data_generator)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)

    registration_checked = False
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        model.train()
        total_loss, seen = 0.0, 0
        num_batches = num_train // batch_size if drop_last else math.ceil(num_train / batch_size)
        bar = tqdm(
            total=num_batches,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for step, idx in enumerate(
            minibatch_indices(num_train, batch_size, generator=data_generator, device=device)
        ):
            if step == num_batches:
                break
            batch = tuple(t[idx] for t in train_data)
            if batch_transform is not None:
                batch = batch_transform(*batch)
            step_loss = svi.step(*batch)
            if not math.isfinite(step_loss):
                bar.close()
                kept = f"{run_dir / CHECKPOINT_NAME} (epoch {history.epochs})" if run_dir else "nothing"
                raise TrainingDivergedError(
                    f"the loss became {step_loss} at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is kept: {kept}; lower --lr or check the data"
                )
            if not registration_checked:
                _check_param_registration(model)
                registration_checked = True
            total_loss += step_loss
            seen += idx.shape[0]
            bar.update(1)
            bar.set_postfix(elbo=f"{-total_loss / seen:.2f}", refresh=False)
        bar.close()

        history.train_elbo.append(-total_loss / max(seen, 1))
        history.valid_elbo.append(evaluate_elbo(model, valid_data))
        history.epoch_seconds.append(time.perf_counter() - started)
        if not all(math.isfinite(v) for v in (history.train_elbo[-1], history.valid_elbo[-1])):
            raise TrainingDivergedError(
                f"the ELBO is not finite after epoch {epoch + 1}; the checkpoint of epoch "
                f"{epoch} is kept; lower --lr or check the data"
            )
        if history.best_epoch == epoch + 1:
            # Model selection on the validation split: keep the best weights beside the last.
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if run_dir is not None:
            save_checkpoint(
                run_dir / CHECKPOINT_NAME,
                {
                    "config": config or {},
                    "epoch": epoch + 1,
                    "model_state": model.state_dict(),
                    "best_model_state": best_state,
                    "optimizer_state": optimizer.get_state(),
                    "rng": _rng_state(data_generator),
                    "history": history.to_dict(),
                },
            )
            atomic_write_json(run_dir / METRICS_NAME, history.metrics())
        if log is not None:
            log(
                f"epoch {epoch + 1}/{epochs}  train ELBO {history.train_elbo[-1]:.2f}  "
                f"valid ELBO {history.valid_elbo[-1]:.2f} nats/image  "
                f"({history.epoch_seconds[-1]:.1f} s)"
            )
    return history
