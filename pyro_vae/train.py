"""Training: one function that runs SVI on any model/guide pair, with checkpoints and exact resume.

:func:`train` seeds everything and runs stochastic variational inference: at every step the
objective's ``differentiable_loss(model.model, model.guide, *batch)`` (``Trace_ELBO`` by default,
the tutorial's one-sample estimator of Eq. 10) is back-propagated and **one** ``torch.optim.Adam``
over all the model's parameters takes a step. This is ``pyro.infer.SVI`` with ``pyro.optim.Adam``
without its per-parameter optimizers and per-step host synchronization (the tests check that both
give the same parameters); it also lets ``DistributedDataParallel`` wrap the loss.

Data live on the training device (one permutation per epoch, batches by slicing). The train and
validation ELBO per datapoint are reported in nats; an atomic checkpoint is written after every
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
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist_utils
from . import estimators
from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint, save_checkpoint
from .data import minibatch_indices
from .errors import CheckpointError, ConfigError, TrainingDivergedError

METRICS_NAME = "metrics.json"
#: Steps between host synchronizations (progress bar, NaN check): the loss stays on the device between.
SYNC_EVERY = 50

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
    """Fail loudly if the networks the model runs are not exactly the ones it registers with Pyro.

    Catches two silent bugs: a network never passed to ``pyro.module`` (Pyro's own tools, such as
    ``pyro.infer.SVI`` and the JIT objectives, would never see or train it), and two models whose
    ``pyro.module`` names collide in the parameter store (one model's weights would stand in for
    the other's).
    """
    stored = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    own = {id(p): name for name, p in model.named_parameters()}
    missing = [name for key, name in own.items() if key not in stored]
    foreign = stored - set(own)
    if missing or foreign:
        raise ConfigError(
            "the parameters registered with Pyro are not the model's own: "
            + (f"not registered with pyro.module: {missing[:5]}; " if missing else "")
            + (
                f"{len(foreign)} tensors from another model share its pyro.module names; "
                "give each model its own name"
                if foreign
                else ""
            )
        )


def evaluate_elbo(
    model: nn.Module,
    data: Sequence[torch.Tensor],
    *,
    batch_size: int = 1000,
    num_samples: int = 1,
    context: dist_utils.DistributedContext | None = None,
) -> float:
    """Mean per-datapoint ELBO (nats) of ``model`` on ``data``, estimated with ``num_samples`` particles.

    In a distributed job each rank scores its shard of ``data`` and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    num = data[0].shape[0]
    rank, world = (context.rank, context.world_size) if context else (0, 1)
    shard = range(rank * batch_size, num, world * batch_size)
    total = torch.zeros((), dtype=torch.float64, device=data[0].device)
    for start in shard:
        batch = tuple(t[start : start + batch_size] for t in data)
        total += estimators.elbo(model.model, model.guide, *batch, num_samples=num_samples).double().sum()
    if context is not None:
        dist_utils.all_reduce_sum(total)
    model.train(was_training)
    return float(total) / num


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
    distributed: dist_utils.DistributedContext | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> TrainHistory:
    """Train ``model.model`` / ``model.guide`` by SVI with Adam; checkpoint every epoch.

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
        Minibatch size (per rank when distributed), Adam learning rate, seed of every generator.
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
        compiled trace is specialized to one batch size, and always in a distributed job.
    distributed : DistributedContext, optional
        Data-parallel training on an initialized process group (see :mod:`pyro_vae.distributed`):
        rank r trains on slice r of every global batch of ``world_size * batch_size``.
    progress : bool
        Show a tqdm bar with the running ELBO (refreshed every :data:`SYNC_EVERY` steps) when the
        output is a terminal.
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
    Pyro's parameter store is cleared first: the networks are registered under the names given to
    ``pyro.module``, and a stale entry of the same name from an earlier model would otherwise stand
    in for this model's weights in Pyro's own tools.
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    loss = loss if loss is not None else pyro.infer.Trace_ELBO()
    if drop_last is None:
        drop_last = isinstance(loss, JIT_OBJECTIVES)
    if distributed is not None:
        drop_last = True  # every rank must get a full slice of every global batch
    if distributed is not None and isinstance(loss, JIT_OBJECTIVES):
        raise ConfigError("JIT objectives cannot be combined with --distributed; use trace or meanfield")
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ConfigError("resume needs the run folder that holds the checkpoint")
    rank, world = (distributed.rank, distributed.world_size) if distributed else (0, 1)
    writes_files = run_dir is not None and rank == 0

    train_data = tuple(t.to(device) for t in train_data)
    valid_data = tuple(t.to(device) for t in valid_data)
    num_train = train_data[0].shape[0]
    global_batch = batch_size * world
    if drop_last and num_train < global_batch:
        raise ConfigError(f"{num_train} training datapoints do not fill one batch of {global_batch}")

    # Each rank draws its own noise (binarization, z); all ranks share the data order.
    seed_everything(seed + rank)
    model.to(device)
    pyro.clear_param_store()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    objective = dist_utils.ObjectiveModule(model, loss, scale=float(world))
    if distributed is not None:
        step_loss_fn = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        step_loss_fn = objective
    data_generator = torch.Generator().manual_seed(seed)
    history = TrainHistory()
    start_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None  # weights of history.best_epoch

    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        try:
            model.load_state_dict(state["model_state"])
            optimizer.load_state_dict(state["optimizer_state"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"the checkpoint in {run_dir} does not fit this model and optimizer "
                f"({str(error).splitlines()[0]})"
            ) from None
        model.to(device)
        history = TrainHistory(**state["history"])
        best_state = state.get("best_model_state")
        start_epoch = int(state["epoch"])
        rank_states = state.get("rank_rng") or [state["rng"]]
        if len(rank_states) != world:
            raise CheckpointError(
                f"the run in {run_dir} was trained on {len(rank_states)} ranks, not {world}"
            )
        _set_rng_state(rank_states[rank], data_generator)
    if writes_files:
        run_dir.mkdir(parents=True, exist_ok=True)

    registration_checked = False
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        model.train()
        total_loss = torch.zeros((), device=device)  # summed over this rank's steps; synced rarely
        seen = 0
        num_batches = num_train // global_batch if drop_last else math.ceil(num_train / global_batch)
        show = None if progress and rank == 0 else True  # None: tqdm shows the bar on terminals only
        bar = tqdm(
            total=num_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=show, leave=False, unit="batch"
        )
        batches = minibatch_indices(num_train, global_batch, generator=data_generator, device=device)
        for step, global_idx in enumerate(batches):
            if step == num_batches:
                break
            idx = global_idx[rank * batch_size : (rank + 1) * batch_size]
            batch = tuple(t[idx] for t in train_data)
            if batch_transform is not None:
                batch = batch_transform(*batch)
            kept = f"{run_dir / CHECKPOINT_NAME} (epoch {history.epochs})" if run_dir else "nothing"
            diverged = (
                f"the loss became NaN or infinite in epoch {epoch + 1} (by step {step + 1}); the last good "
                f"checkpoint is kept: {kept}; lower --lr or check the data"
            )
            try:
                step_loss = step_loss_fn(*batch)
            except ValueError as error:
                # With validation on, weights ruined by an earlier non-finite step surface here as
                # invalid distribution parameters: the loss is only read every SYNC_EVERY steps.
                if _all_finite(model) and math.isfinite(float(total_loss)):
                    raise
                bar.close()
                raise TrainingDivergedError(diverged) from error
            optimizer.zero_grad(set_to_none=True)
            step_loss.backward()
            optimizer.step()
            total_loss += step_loss.detach() / world  # undo the rank scaling: this rank's batch loss
            seen += global_idx.shape[0]
            if not registration_checked:
                _check_param_registration(model)
                registration_checked = True
            if (step + 1) % SYNC_EVERY == 0 or step + 1 == num_batches:
                running = _synced_sum(total_loss, distributed)
                if not math.isfinite(running):
                    bar.close()
                    raise TrainingDivergedError(diverged)
                bar.set_postfix(elbo=f"{-running / seen:.2f}", refresh=False)
            bar.update(1)
        bar.close()

        history.train_elbo.append(-_synced_sum(total_loss, distributed) / max(seen, 1))
        history.valid_elbo.append(evaluate_elbo(model, valid_data, context=distributed))
        history.epoch_seconds.append(time.perf_counter() - started)
        if not all(math.isfinite(v) for v in (history.train_elbo[-1], history.valid_elbo[-1])):
            raise TrainingDivergedError(
                f"the ELBO is not finite after epoch {epoch + 1}; the checkpoint of epoch "
                f"{epoch} is kept; lower --lr or check the data"
            )
        if history.best_epoch == epoch + 1:
            # Model selection on the validation split: keep the best weights beside the last.
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rank_rng = _rng_state(data_generator)
        if distributed is not None:
            rank_rng = dist_utils.all_gather_objects(rank_rng, distributed)
        if writes_files:
            save_checkpoint(
                run_dir / CHECKPOINT_NAME,
                {
                    "config": config or {},
                    "epoch": epoch + 1,
                    "model_state": model.state_dict(),
                    "best_model_state": best_state,
                    "optimizer_state": optimizer.state_dict(),
                    "rng": rank_rng[0] if distributed is not None else rank_rng,
                    "rank_rng": rank_rng if distributed is not None else None,
                    "history": history.to_dict(),
                },
            )
            atomic_write_json(run_dir / METRICS_NAME, history.metrics())
        if distributed is not None:
            dist_utils.barrier()  # no rank runs ahead of the checkpoint it may resume from
        if log is not None and rank == 0:
            log(
                f"epoch {epoch + 1}/{epochs}  train ELBO {history.train_elbo[-1]:.2f}  "
                f"valid ELBO {history.valid_elbo[-1]:.2f} nats/image  "
                f"({history.epoch_seconds[-1]:.1f} s)"
            )
    return history


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _synced_sum(value: torch.Tensor, context: dist_utils.DistributedContext | None) -> float:
    """The host value of ``value`` summed over ranks (one synchronization)."""
    if context is None:
        return float(value)
    return float(dist_utils.all_reduce_sum(value.detach().clone()))
