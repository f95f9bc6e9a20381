"""Stop training at the step where it diverges, before the weights are ruined.

After every backward pass :class:`DivergenceGuard` checks the loss and every gradient for NaN and
infinities with the kernel ``torch.amp.GradScaler`` uses (one pass over the gradients, about a
seventh of the cost of computing and clipping their norm), clips the gradient norm when asked, and raises a
*sticky* flag on the device when anything is not finite. The flag is handed to Adam's fused
kernel as ``found_inf`` (again GradScaler's mechanism), which then skips the update: from the
first bad step on the weights stay as they were, without a host synchronization per step. The
training loop reads the flag with its periodic synchronization and stops with the step where it
happened. Optimizers without the fused kernel are checked on the host after every step instead
(``on_device`` is then ``False``).
"""

from __future__ import annotations

import torch


class DivergenceGuard:
    """Watch one optimizer's steps for a non-finite loss or gradient.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its parameters' gradients are checked; with ``fused=True`` Adam (or any optimizer whose
        ``step`` honours ``found_inf``) bad steps are skipped on the device.
    clip_grad_norm : float, optional
        Clip the total gradient norm to this value (``torch.nn.utils.clip_grad_norm_``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None = None):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.clip_grad_norm = clip_grad_norm
        self.on_device = bool(optimizer.defaults.get("fused"))
        device = self.params[0].device
        self._found_inf = torch.zeros((), device=device)  # 1.0 from the first bad step on
        self._loss_bad = torch.zeros((), dtype=torch.bool, device=device)
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self._one = torch.ones((), device=device)

    def after_backward(self, loss: torch.Tensor, step: int) -> None:
        """Check (and clip) the gradients of ``step``; arm the skip when anything is not finite."""
        grads = [p.grad for p in self.params if p.grad is not None]
        loss = loss.detach().reshape(1).clone()  # checked with the gradients, never changed in place
        try:
            # Sets found_inf to 1 if any value is NaN or infinite (and multiplies them all by 1).
            torch._amp_foreach_non_finite_check_and_unscale_([*grads, loss], self._found_inf, self._one)
        except (RuntimeError, NotImplementedError):  # a device without GradScaler's kernel
            norms = torch.stack([torch.linalg.vector_norm(t) for t in (*grads, loss)])
            self._found_inf = torch.maximum(self._found_inf, (~torch.isfinite(norms).all()).float())
        self._loss_bad.logical_or_(~torch.isfinite(loss[0]))
        self._first_bad_step = torch.where(
            (self._found_inf > 0) & (self._first_bad_step < 0), step, self._first_bad_step
        )
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm, foreach=True)
        if self.on_device:
            self.optimizer.found_inf = self._found_inf

    def tripped(self) -> bool:
        """Whether a step has diverged (one host synchronization)."""
        return bool(self._found_inf > 0)

    def describe(self) -> str:
        """``"the loss"`` or ``"the gradient"`` ``"became NaN or infinite at step N"``."""
        what = "the loss" if bool(self._loss_bad) else "the gradient"
        return f"{what} became NaN or infinite at step {int(self._first_bad_step) + 1}"

    def release(self) -> None:
        """Detach from the optimizer (its next ``step`` updates as usual)."""
        if hasattr(self.optimizer, "found_inf"):
            del self.optimizer.found_inf
