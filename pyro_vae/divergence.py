"""Stop training at the step where it diverges, before the weights are ruined.

After every backward pass :class:`DivergenceGuard` computes the gradient norm (clipping it when
asked) and raises a *sticky* flag on the device when the loss or the norm is not finite. The flag
is handed to Adam's fused kernel as ``found_inf`` (the mechanism ``torch.amp.GradScaler`` uses),
which then skips the update: from the first bad step on the weights stay as they were, without a
host synchronization per step. The training loop reads the flag with its periodic
synchronization and stops with the step where it happened. Optimizers without the fused kernel
are checked on the host after every step instead (``on_device`` is then ``False``).
"""

from __future__ import annotations

import math

import torch


class DivergenceGuard:
    """Watch one optimizer's steps for a non-finite loss or gradient norm.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its parameters' gradients are measured; with ``fused=True`` Adam (or any optimizer whose
        ``step`` honours ``found_inf``) bad steps are skipped on the device.
    clip_grad_norm : float, optional
        Clip the total gradient norm to this value (``torch.nn.utils.clip_grad_norm_``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None = None):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.max_norm = math.inf if clip_grad_norm is None else float(clip_grad_norm)
        self.on_device = bool(optimizer.defaults.get("fused"))
        device = self.params[0].device
        self._tripped = torch.zeros((), dtype=torch.bool, device=device)
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self._what = torch.zeros((), dtype=torch.long, device=device)  # 1: loss, 2: gradient norm

    def after_backward(self, loss: torch.Tensor, step: int) -> None:
        """Measure (and clip) the gradients of ``step``; arm the skip when anything is not finite."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        loss_bad = ~torch.isfinite(loss.detach())
        bad = loss_bad | ~torch.isfinite(norm)
        newly = bad & ~self._tripped
        self._first_bad_step = torch.where(newly, step, self._first_bad_step)
        self._what = torch.where(newly, torch.where(loss_bad, 1, 2), self._what)
        self._tripped = self._tripped | bad
        if self.on_device:
            self.optimizer.found_inf = self._tripped.float()

    def tripped(self) -> bool:
        """Whether a step has diverged (one host synchronization)."""
        return bool(self._tripped)

    def describe(self) -> str:
        """``"the loss"`` or ``"the gradient norm"`` ``"became NaN or infinite at step N"``."""
        what = "the loss" if int(self._what) == 1 else "the gradient norm"
        return f"{what} became NaN or infinite at step {int(self._first_bad_step) + 1}"

    def release(self) -> None:
        """Detach from the optimizer (its next ``step`` updates as usual)."""
        if hasattr(self.optimizer, "found_inf"):
            del self.optimizer.found_inf
