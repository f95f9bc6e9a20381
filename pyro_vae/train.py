"""Training: stochastic variational inference on any model/guide pair, with checkpoints and exact resume.

:func:`train` is SVI: at every step the objective's ``differentiable_loss(model.model,
model.guide, *batch)`` is back-propagated and **one** ``torch.optim.Adam`` over all the model's
parameters takes a step (``pyro.infer.SVI`` with ``pyro.optim.Adam``, without its per-parameter
optimizers and per-step host synchronization; the tests check both take the same steps). The
default objective is the tutorial's Eq. 10: one reparameterized sample for E_Q[log P(X|z)] and
the closed-form KL of Eq. 7 (``TraceMeanField_ELBO``); see :data:`pyro_vae.builders.OBJECTIVES`.

The loop reads as the algorithm. Around it are small named pieces: the learning-rate schedule,
the KL warm-up and early stopping (:mod:`pyro_vae.schedules`), validation (:func:`evaluate_elbo`)
and the checkpoint (:class:`~pyro_vae.train_state.TrainingState`). Data live on the training
device (one permutation per epoch, batches by slicing).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyro
import pyro.infer
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist_utils
from .builders import TrainConfig, build_objective
from .data import minibatch_indices
from .divergence import DivergenceGuard
from .errors import ConfigError, TrainingDivergedError
from .evaluation import evaluate_elbo
from .objectives import JitIWAE_ELBO, describe_objective, kl_forms  # noqa: F401 (kl_forms: re-exported)
from .schedules import (
    build_lr_scheduler,
    kl_warmup,
    kl_weight,
    should_stop_early,
    step_lr_scheduler,
)
from .train_state import (  # noqa: F401 (re-exported: the names callers import from here)
    METRICS_NAME,
    TrainHistory,
    TrainingState,
    resolve_device,
    rng_state,
    seed_everything,
)

#: Steps between host synchronizations (progress bar, NaN check): the loss stays on the device between.
SYNC_EVERY = 50

#: ELBO classes whose compiled trace fixes the batch size and bakes in every Python-side value.
JIT_OBJECTIVES = (
    pyro.infer.JitTrace_ELBO,
    pyro.infer.JitTraceMeanField_ELBO,
    pyro.infer.JitTraceGraph_ELBO,
    JitIWAE_ELBO,
)


def train(
    model: nn.Module,
    train_data: Sequence[torch.Tensor],
    valid_data: Sequence[torch.Tensor],
    settings: TrainConfig | None = None,
    *,
    loss: pyro.infer.ELBO | None = None,
    batch_transform: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    device: torch.device | str = "cpu",
    run_dir: str | Path | None = None,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    distributed: dist_utils.DistributedContext | None = None,
    clear_param_store: bool = True,
    snapshot_epochs: Collection[int] = (),
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    **overrides: Any,
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
    settings : TrainConfig, optional
        Epochs (the total: with ``resume`` training continues up to it), batch size (per rank when
        distributed), Adam's lr/betas/eps, the seed, the objective and its ``num_particles``, the
        ``lr_schedule``, ``kl_warmup`` epochs and early-stopping ``patience``.
    loss : pyro.infer.ELBO, optional
        The objective; default ``build_objective(settings.objective, settings.num_particles)``.
    batch_transform : callable, optional
        Applied to every training batch, e.g. dynamic binarization ``lambda x: (binarize(x),)``.
    device : torch device or ``"auto"``
        Where the model and data live during training.
    run_dir : path, optional
        Folder for ``checkpoint.pt`` and ``metrics.json``, written atomically after every epoch.
    config : dict, optional
        JSON-able description of the run, stored in the checkpoint to rebuild the model.
    resume : bool
        Continue from ``run_dir/checkpoint.pt`` (weights, optimizer, schedule, history, RNG states).
    distributed : DistributedContext, optional
        Data-parallel training on an initialized process group (see :mod:`pyro_vae.distributed`):
        rank r trains on slice r of every global batch of ``world_size * batch_size``.
    clear_param_store : bool
        Empty Pyro's parameter store first (default). The networks enter it under their
        ``pyro.module`` names, and a stale entry of the same name from an earlier model would
        stand in for this model's weights in Pyro's own tools; with ``False`` such a clash is an
        error instead.
    snapshot_epochs : collection of int
        Epochs (1-based) after which the weights are also kept in ``run_dir/snapshots/``
        (:meth:`TrainingState.save_snapshot`): the points of a learning curve measured later
        with a costlier estimator than the per-epoch validation ELBO. They do not change training.
    progress : bool
        Show a tqdm bar with the running objective (refreshed every :data:`SYNC_EVERY` steps)
        when the output is a terminal.
    log : callable, optional
        Receives one line per epoch; ``None`` for silence.
    **overrides
        Fields of ``settings`` given directly, e.g. ``train(..., epochs=5, lr=3e-3)``.

    Returns
    -------
    TrainHistory
        Train objective and validation ELBO per datapoint (nats), seconds and learning rate per epoch.

    Raises
    ------
    TrainingDivergedError
        The loss became NaN or infinite; the checkpoint of the last finished epoch is kept.
    """
    settings = _settings(settings, overrides)
    device = resolve_device(device)
    loss = loss if loss is not None else build_objective(settings.objective, settings.num_particles)
    _check_objective(loss, settings, distributed)
    drop_last = isinstance(loss, JIT_OBJECTIVES) or distributed is not None
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ConfigError("resume needs the run folder that holds the checkpoint")
    rank, world = (distributed.rank, distributed.world_size) if distributed else (0, 1)
    writes_files = run_dir is not None and rank == 0

    train_data = tuple(t.to(device) for t in train_data)
    valid_data = tuple(t.to(device) for t in valid_data)
    global_batch = settings.batch_size * world
    num_train = train_data[0].shape[0]
    if drop_last and num_train < global_batch:
        raise ConfigError(f"{num_train} training datapoints do not fill one batch of {global_batch}")
    num_batches = num_train // global_batch if drop_last else math.ceil(num_train / global_batch)
    if global_batch > num_train and not drop_last and log is not None and rank == 0:
        log(f"warning: the batch size {global_batch} exceeds the {num_train} training datapoints; "
            f"every epoch is one step on a batch of {num_train}")  # fmt: skip

    seed_everything(settings.seed + rank)  # each rank draws its own noise; all share the data order
    model.to(device)
    if clear_param_store:
        pyro.clear_param_store()
    state = _initial_state(model, settings, device)
    if resume:
        state.restore(run_dir, rank=rank, world_size=world)
    if writes_files:
        run_dir.mkdir(parents=True, exist_ok=True)
    if state.history.epochs == 0 and run_dir is not None:
        # Epoch 0: the initial weights, so that a run diverging in its first epoch keeps a good state.
        _save(state, run_dir, config, distributed, writes_files)
    step_loss_fn = _loss_module(model, loss, distributed, device)
    if log is not None and rank == 0 and state.history.epochs == 0:
        batch = tuple(t[:2] for t in train_data)
        with torch.random.fork_rng(devices=_cuda_devices()):  # leave the training's random stream alone
            batch = batch_transform(*batch) if batch_transform is not None else batch
        log(describe_objective(model, loss, batch, settings.objective, settings.kl_warmup))

    first_epoch = state.history.epochs
    for epoch in range(first_epoch, settings.epochs):
        if should_stop_early(state.history.valid_elbo, settings.patience):
            best = f"best {max(state.history.valid_elbo):.2f} at epoch {state.history.best_epoch}"
            detail = f"no better validation ELBO for {settings.patience} epochs ({best})"
            _record_stop(state, "early stopping", epoch + 1, detail, run_dir if writes_files else None)
            if log is not None and rank == 0:
                log(f"early stop: {detail}")
            break
        started = time.perf_counter()
        learning_rate = state.optimizer.param_groups[0]["lr"]
        try:
            train_elbo = run_epoch(
                step_loss_fn, state, train_data, batch_transform, settings,
                epoch=epoch, num_batches=num_batches, distributed=distributed,
                progress=progress and rank == 0, run_dir=run_dir, check_registration=epoch == first_epoch,
            )  # fmt: skip
            valid_elbo = evaluate_elbo(model, valid_data, context=distributed)
            _record_epoch(state.history, train_elbo, valid_elbo, time.perf_counter() - started, learning_rate)
        except TrainingDivergedError as error:
            _record_stop(state, "diverged", epoch + 1, str(error), run_dir if writes_files else None)
            raise
        step_lr_scheduler(state.scheduler, valid_elbo)
        state.keep_if_best()
        _save(state, run_dir, config, distributed, writes_files)
        if writes_files and state.history.epochs in snapshot_epochs:
            state.save_snapshot(run_dir)
        if log is not None and rank == 0:
            log(_epoch_line(state.history, settings.epochs))
    return state.history


def run_epoch(
    step_loss_fn: Callable[..., torch.Tensor],
    state: TrainingState,
    train_data: tuple[torch.Tensor, ...],
    batch_transform: Callable | None,
    settings: TrainConfig,
    *,
    epoch: int,
    num_batches: int,
    distributed: dist_utils.DistributedContext | None = None,
    progress: bool = True,
    run_dir: Path | None = None,
    check_registration: bool = False,
) -> float:
    """One pass over the training data: a gradient step per minibatch; the mean objective per datapoint.

    The running loss stays on the device and is read every :data:`SYNC_EVERY` steps, to show
    progress and to stop on a non-finite value.
    """
    rank, world = (distributed.rank, distributed.world_size) if distributed else (0, 1)
    batch_size = settings.batch_size
    total_loss = torch.zeros((), device=train_data[0].device)  # summed over this rank's steps
    seen = 0
    bar = tqdm(
        total=num_batches,
        desc=f"epoch {epoch + 1}/{settings.epochs}",
        leave=False,
        unit="batch",
        disable=None if progress else True,  # None: a bar on terminals only
    )
    kept = f"{run_dir} (epoch {state.history.epochs})" if run_dir else "nothing"

    def diverged(what: str) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"{what} in epoch {epoch + 1}; training stopped and the last good checkpoint is kept: "
            f"{kept}; lower --lr, try --clip-grad-norm, or check the data"
        )

    guard = DivergenceGuard(state.optimizer, settings.clip_grad_norm)
    batches = minibatch_indices(
        train_data[0].shape[0], batch_size * world, generator=state.data_generator, device=total_loss.device
    )
    for step, global_idx in zip(range(num_batches), batches):
        idx = global_idx[rank * batch_size : (rank + 1) * batch_size]
        batch = tuple(t[idx] for t in train_data)
        if batch_transform is not None:
            batch = batch_transform(*batch)
        try:
            with kl_warmup(kl_weight(epoch * num_batches + step, num_batches, settings.kl_warmup)):
                step_loss = step_loss_fn(*batch)
        except ValueError as error:
            # Pyro's validation refuses a distribution whose parameters the networks computed as
            # NaN or infinite: weights grown (finitely) out of range. Not on the first step,
            # where it is a modelling error rather than a divergence.
            bar.close()
            guard.release()
            if step == 0 and epoch == 0:
                raise
            found = re.search(r"parameter (\w+) .*of distribution (\w+)", str(error).splitlines()[0])
            where = f" ({found[2]}'s {found[1]})" if found else ""
            raise diverged(
                f"a distribution's parameters became NaN or infinite at step {step + 1}{where}"
            ) from None
        state.optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        guard.after_backward(step_loss, step)
        if not guard.on_device and guard.tripped():
            bar.close()
            raise diverged(guard.describe())
        state.optimizer.step()
        total_loss += step_loss.detach() / world  # undo the rank scaling: this rank's batch loss
        seen += global_idx.shape[0]
        if step == 0 and check_registration:
            _check_param_registration(state.model)
        if (step + 1) % SYNC_EVERY == 0 or step + 1 == num_batches:
            if guard.tripped():
                bar.close()
                guard.release()
                raise diverged(guard.describe())
            running = _synced_sum(total_loss, distributed)
            bar.set_postfix(elbo=f"{-running / seen:.2f}", refresh=False)
        bar.update(1)
    bar.close()
    guard.release()
    return -_synced_sum(total_loss, distributed) / max(seen, 1)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _settings(settings: TrainConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    settings = settings if settings is not None else TrainConfig()
    try:
        return replace(settings, **overrides)
    except TypeError as error:
        raise ConfigError(f"train() got an unknown setting ({error})") from None


def _check_objective(loss, settings: TrainConfig, distributed) -> None:
    if isinstance(loss, JIT_OBJECTIVES):
        if distributed is not None:
            raise ConfigError("JIT objectives cannot be combined with --distributed; use trace or meanfield")
        if settings.kl_warmup > 0:
            raise ConfigError(
                "a JIT objective compiles the KL weight in once; use --objective meanfield with --kl-warmup"
            )


def _initial_state(model: nn.Module, settings: TrainConfig, device: torch.device) -> TrainingState:
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, betas=tuple(settings.adam_betas), eps=settings.adam_eps,
        fused=_fused_adam_available(model, device),
    )  # fmt: skip
    scheduler = build_lr_scheduler(
        settings.lr_schedule, optimizer, epochs=settings.epochs, milestones=settings.lr_milestones,
        decay=settings.lr_decay,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(settings.seed)
    return TrainingState(model=model, optimizer=optimizer, scheduler=scheduler, data_generator=generator)


def _fused_adam_available(model: nn.Module, device: torch.device) -> bool:
    """Adam's fused kernel (one pass over all parameters; about 2x faster per step on a small net)."""
    return device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())


def _loss_module(model, loss, distributed, device) -> nn.Module:
    objective = dist_utils.ObjectiveModule(
        model, loss, scale=float(distributed.world_size if distributed else 1)
    )
    if distributed is None:
        return objective
    return torch.nn.parallel.DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None
    )


def _record_epoch(history: TrainHistory, train_elbo, valid_elbo, seconds: float, learning_rate) -> None:
    history.train_elbo.append(train_elbo)
    history.valid_elbo.append(valid_elbo)
    history.epoch_seconds.append(seconds)
    history.learning_rate.append(learning_rate)
    if not (math.isfinite(train_elbo) and math.isfinite(valid_elbo)):
        raise TrainingDivergedError(
            f"the ELBO is not finite after epoch {history.epochs}; the checkpoint of epoch "
            f"{history.epochs - 1} is kept; lower --lr or check the data"
        )


def _record_stop(state: TrainingState, reason: str, epoch: int, detail: str, run_dir: Path | None) -> None:
    """Say in the history (and in ``metrics.json``) why and when training ended early."""
    state.history.stop = {"reason": reason, "epoch": epoch, "detail": detail}
    if run_dir is not None:
        state.save_metrics(run_dir)


def _save(state: TrainingState, run_dir, config, distributed, writes_files: bool) -> None:
    rank_rng = rng_state(state.data_generator)
    if distributed is not None:
        rank_rng = dist_utils.all_gather_objects(rank_rng, distributed)
    if writes_files:
        state.save(run_dir, config, rank_rng)
    if distributed is not None:
        dist_utils.barrier()  # no rank runs ahead of the checkpoint it may resume from


def _epoch_line(history: TrainHistory, epochs: int) -> str:
    return (
        f"epoch {history.epochs}/{epochs}  train objective {history.train_elbo[-1]:.2f}  "
        f"valid ELBO {history.valid_elbo[-1]:.2f} nats/image  lr {history.learning_rate[-1]:.3g}  "
        f"({history.epoch_seconds[-1]:.1f} s)"
    )


def _check_param_registration(model: nn.Module) -> None:
    """Fail loudly if the networks the model runs are not exactly the ones it registers with Pyro.

    Catches two silent bugs: a network never passed to ``pyro.module`` (Pyro's own tools, such as
    ``pyro.infer.SVI`` and the JIT objectives, would never see or train it), and two models whose
    ``pyro.module`` names collide in the parameter store (one model's weights would stand in for
    the other's).
    """
    stored = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    # Frozen parameters (requires_grad=False) are left out of the store by pyro.module by design.
    own = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    missing = [name for key, name in own.items() if key not in stored]
    foreign = stored - set(own)
    if missing or foreign:
        raise ConfigError(
            "the parameters registered with Pyro are not the model's own: "
            + (f"not registered with pyro.module: {missing[:5]}; " if missing else "")
            + (
                f"{len(foreign)} tensors from another model share its pyro.module names; "
                "give each model its own name or clear Pyro's parameter store"
                if foreign
                else ""
            )
        )


def _synced_sum(value: torch.Tensor, context: dist_utils.DistributedContext | None) -> float:
    """The host value of ``value`` summed over ranks (one synchronization)."""
    if context is None:
        return float(value)
    return float(dist_utils.all_reduce_sum(value.detach().clone()))
