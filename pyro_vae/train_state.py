"""The state a training run carries from epoch to epoch, and how it is saved and restored exactly.

A checkpoint holds the weights (last and best epoch), the optimizer's moments, the learning-rate
scheduler's state, the per-epoch history and every random number generator (Python, Torch on
every device, and the generator that orders the data). Restoring all of it is what makes "2
epochs" and "1 epoch, resume, 1 epoch" end with identical parameters on the CPU.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint, save_checkpoint
from .errors import CheckpointError, ConfigError

METRICS_NAME = "metrics.json"
#: Folder of a run that holds the weights of chosen epochs (``train(..., snapshot_epochs=...)``).
SNAPSHOTS_NAME = "snapshots"


@dataclass
class TrainHistory:
    """Per-epoch numbers of a run, in nats per datapoint (ELBOs), seconds and learning rates."""

    train_elbo: list[float] = field(default_factory=list)
    valid_elbo: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)  # the rate each epoch trained with
    #: Why training ended before its last epoch: {"reason": "diverged" | "early stopping", "epoch":
    #: the epoch it happened in (1-based), "detail": one line}; None while it has not.
    stop: dict[str, Any] | None = None

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


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
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


def rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    """Every generator's state, as plain data that ``torch.load(weights_only=True)`` reads back."""
    state = {
        "torch": torch.get_rng_state(),
        "data": data_generator.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    """What one epoch hands to the next: history, best weights, and the objects that learn."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch.optim.lr_scheduler object, or None
    data_generator: torch.Generator
    history: TrainHistory = field(default_factory=TrainHistory)
    best_state: dict[str, torch.Tensor] | None = None  # weights of history.best_epoch

    def keep_if_best(self) -> None:
        """Model selection on the validation split: copy the weights when this epoch is the best."""
        if self.history.best_epoch == self.history.epochs:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def payload(self, config: dict[str, Any] | None, rank_rng: list[dict] | dict) -> dict[str, Any]:
        """The checkpoint dictionary (``rank_rng``: this process's RNG state, or every rank's)."""
        distributed = isinstance(rank_rng, list)
        return {
            "config": config or {},
            "epoch": self.history.epochs,
            "model_state": self.model.state_dict(),
            "best_model_state": self.best_state,
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rank_rng[0] if distributed else rank_rng,
            "rank_rng": rank_rng if distributed else None,
            "history": self.history.to_dict(),
        }

    def save(self, run_dir: Path, config: dict[str, Any] | None, rank_rng) -> None:
        """Atomically write ``checkpoint.pt`` and ``metrics.json`` into ``run_dir``."""
        save_checkpoint(run_dir / CHECKPOINT_NAME, self.payload(config, rank_rng))
        self.save_metrics(run_dir)

    def save_snapshot(self, run_dir: Path) -> Path:
        """Atomically write this epoch's weights to ``run_dir/snapshots/epoch-NNNNN.pt``.

        A snapshot holds the weights only (no optimizer, no generators): it is for measuring the
        model along its training (for example log p-hat against epochs), not for resuming it.
        """
        folder = run_dir / SNAPSHOTS_NAME
        folder.mkdir(exist_ok=True)
        path = folder / f"epoch-{self.history.epochs:05d}.pt"
        save_checkpoint(path, {"snapshot_epoch": self.history.epochs, "model_state": self.model.state_dict()})
        return path

    def save_metrics(self, run_dir: Path) -> None:
        """Atomically write ``metrics.json`` alone (e.g. why training stopped; the checkpoint stays)."""
        atomic_write_json(run_dir / METRICS_NAME, self.history.metrics())

    def restore(self, run_dir: Path, *, rank: int, world_size: int) -> None:
        """Load the checkpoint in ``run_dir``: weights, optimizer, scheduler, history, generators."""
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        if state.get("exported") is not None:
            raise CheckpointError(
                f"{run_dir} holds exported weights only (no optimizer state) and cannot be resumed; "
                "train a new run, or resume the run it was exported from"
            )
        try:
            self.model.load_state_dict(state["model_state"])
            self.optimizer.load_state_dict(state["optimizer_state"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler_state"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"the checkpoint in {run_dir} does not fit this model, optimizer and schedule "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
            ) from None
        self.history = TrainHistory(**state["history"])
        self.best_state = state.get("best_model_state")
        rank_states = state.get("rank_rng") or [state["rng"]]
        if len(rank_states) != world_size:
            raise CheckpointError(
                f"the run in {run_dir} was trained on {len(rank_states)} ranks, not {world_size}"
            )
        set_rng_state(rank_states[rank], self.data_generator)


def log_spaced_epochs(epochs: int) -> list[int]:
    """Epochs 1, 2, 5, 10, 20, 50, ... up to ``epochs``, and ``epochs`` itself: snapshot points
    that are even on the logarithmic epoch axis a learning curve is read on."""
    points, decade = {epochs} if epochs > 0 else set(), 1
    while decade <= epochs:
        points.update(m * decade for m in (1, 2, 5) if m * decade <= epochs)
        decade *= 10
    return sorted(points)


def list_snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every snapshot a run folder holds, by epoch."""
    folder = Path(run_dir) / SNAPSHOTS_NAME
    found = []
    for path in sorted(folder.glob("epoch-*.pt")) if folder.is_dir() else []:
        try:
            found.append((int(path.stem.removeprefix("epoch-")), path))
        except ValueError:
            continue  # not a snapshot's name; leave the file alone
    return sorted(found)


def load_snapshot_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict a snapshot holds (loaded with ``weights_only=True``)."""
    state = load_checkpoint(path)
    if "snapshot_epoch" not in state:
        raise CheckpointError(f"{path} is a pyro-vae checkpoint but not a weights snapshot")
    return state["model_state"]
