"""Data-parallel training on ``torch.distributed``, launched with ``torchrun``.

Every rank holds a replica of the model and trains on its shard of each global batch; gradients
are averaged by ``DistributedDataParallel`` during ``backward()``. The loss of each rank is
multiplied by the world size first, so the averaged gradient is the gradient of the loss summed
over the whole global batch: N ranks with batch B take exactly the step one process takes with
batch N x B. Only rank 0 writes checkpoints, metrics and figures.

    torchrun --nproc_per_node 2 -m pyro_vae.cli train vae --distributed ...

Backends: ``gloo`` on the CPU, ``nccl`` on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a ``torch.distributed`` job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files."""
        return self.rank == 0


def init_from_environment(device_kind: str) -> tuple[DistributedContext, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment.

    Returns the context and this rank's device (``cuda:LOCAL_RANK`` for CUDA, else the CPU).
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR") if name not in os.environ]
    if missing:
        raise ConfigError(
            f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing); launch with "
            f"'torchrun --nproc_per_node N -m pyro_vae.cli train ... --distributed'"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place) and return it."""
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_gather_objects(obj: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``obj``, in rank order (e.g. the random-number states for a checkpoint)."""
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class ObjectiveModule(nn.Module):
    """The loss of a model/guide pair as an ``nn.Module``, so that ``DistributedDataParallel`` can wrap it.

    ``forward(*batch)`` returns ``scale * objective.differentiable_loss(model.model, model.guide, *batch)``;
    DDP's gradient hooks fire during its backward pass.
    """

    def __init__(self, model: nn.Module, objective, scale: float = 1.0):
        super().__init__()
        self.model = model
        self.objective = objective
        self.scale = scale
        # Hold the bound methods: every ``model.model`` access makes a new object, and Pyro's JIT
        # objectives key their compiled trace on id(model) and id(guide). Fresh ids would recompile
        # the loss at every step (3x slower than no JIT at all).
        self._model_fn = model.model
        self._guide_fn = model.guide

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.scale * self.objective.differentiable_loss(self._model_fn, self._guide_fn, *batch)
