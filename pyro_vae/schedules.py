"""What changes over training: the learning-rate schedule, the KL warm-up and early stopping.

Each is a small piece :func:`pyro_vae.train.train` calls once per epoch or step; none holds state
that the history and the optimizer do not already hold, except the plateau schedule, whose state
goes into the checkpoint (``scheduler.state_dict()``), so that ``--resume`` continues bit-exactly.

Schedules (``--lr-schedule``)
    ``none``     the constant learning rate.
    ``iwae``     Burda, Grosse & Salakhutdinov (2016), section 5: stages i = 0..7 of 3^i passes
                 over the data at lr * 10^(-i/7), 3,280 epochs in all; the last stage's rate holds
                 after it.
    ``cosine``   lr * (1 + cos(pi * epoch / epochs)) / 2 over the run's ``epochs`` (Loshchilov &
                 Hutter, 2017, without restarts).
    ``plateau``  halve the rate when the validation ELBO has not improved for
                 :data:`PLATEAU_PATIENCE` epochs (``torch.optim.lr_scheduler.ReduceLROnPlateau``).
    ``step``     multiply the rate by ``lr_decay`` at each epoch of ``lr_milestones``
                 (``torch.optim.lr_scheduler.MultiStepLR``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pyro.poutine.messenger import Messenger

#: Number of IWAE stages (i = 0..7) and their total length, sum_i 3^i = 3,280 epochs.
IWAE_STAGES = 8
IWAE_SCHEDULE_EPOCHS = (3**IWAE_STAGES - 1) // 2
#: The plateau schedule: halve after this many epochs without a better validation ELBO.
PLATEAU_PATIENCE = 5
PLATEAU_FACTOR = 0.5
LR_SCHEDULES = ("none", "iwae", "cosine", "plateau", "step")


def iwae_stage(epoch: int) -> int:
    """The IWAE schedule's stage i of a 0-based epoch: stage i spans 3^i epochs, capped at 7."""
    stage, end = 0, 1
    while epoch >= end and stage < IWAE_STAGES - 1:
        stage += 1
        end += 3**stage
    return stage


def iwae_lr_factor(epoch: int) -> float:
    """10^(-i/7) for the epoch's stage i (Burda et al., 2016, section 5)."""
    return 10.0 ** (-iwae_stage(epoch) / (IWAE_STAGES - 1))


class CosineFactor:
    """(1 + cos(pi * epoch / epochs)) / 2, a picklable ``lr_lambda``."""

    def __init__(self, epochs: int):
        self.epochs = max(int(epochs), 1)

    def __call__(self, epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))


def build_lr_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    milestones: tuple[int, ...] = (),
    decay: float = 0.1,
):
    """The ``torch.optim.lr_scheduler`` of a schedule name, stepped once per epoch; ``None`` for ``none``.

    ``LambdaLR`` sets the epoch-0 rate on construction; ``plateau`` reads the validation ELBO
    (mode ``max``) in ``step(valid_elbo)``; ``step`` uses ``milestones`` (0-based epochs at which
    the rate is multiplied by ``decay``).
    """
    if name == "none":
        return None
    if name == "iwae":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, iwae_lr_factor)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineFactor(epochs))
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
        )
    if name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=decay)
    raise ValueError(f"unknown learning-rate schedule {name!r}; choose from {', '.join(LR_SCHEDULES)}")


def step_lr_scheduler(scheduler, valid_elbo: float) -> None:
    """Advance a scheduler by one epoch (the plateau schedule reads the validation ELBO)."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(valid_elbo)
    else:
        scheduler.step()


class ScaleLatentSites(Messenger):
    r"""Multiply the log-density of every latent (unobserved) sample site by ``beta``.

    In the ELBO, log p(x|z) + beta [log p(z) - log q(z|x)]: the KL term of Eq. 7 weighted by
    beta, whether the objective takes it in closed form (``TraceMeanField_ELBO`` scales the KL by
    the guide site's scale) or by sampling. Applied around the loss, it reaches the model's and
    the guide's traces alike.
    """

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


def kl_weight(step: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """KL warm-up (Bowman et al., 2016; Sonderby et al., 2016): beta rises linearly from 0 to 1.

    beta = min(1, step / (warmup_epochs * steps_per_epoch)) for a 0-based global ``step``.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, step / (warmup_epochs * steps_per_epoch))


@contextmanager
def kl_warmup(beta: float) -> Iterator[None]:
    """Scale the latent sites by ``beta`` inside the block (nothing at all when beta is 1)."""
    if beta >= 1.0:
        yield
        return
    with ScaleLatentSites(beta):
        yield


def epochs_without_improvement(valid_elbo: list[float]) -> int:
    """Epochs since the best validation ELBO (0 when the last epoch is the best)."""
    if not valid_elbo:
        return 0
    best = max(range(len(valid_elbo)), key=lambda i: valid_elbo[i])
    return len(valid_elbo) - 1 - best


def should_stop_early(valid_elbo: list[float], patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have passed without a better validation ELBO.

    Derived from the history alone, so a resumed run that had stopped stays stopped.
    """
    return patience is not None and len(valid_elbo) > 0 and epochs_without_improvement(valid_elbo) >= patience
