"""ELBO objectives, with a fix for Pyro 1.9's compiled mean-field ELBO.

``pyro.infer.JitTraceMeanField_ELBO.differentiable_loss`` (Pyro 1.9.2) tests whether its compiled
loss exists under the attribute ``_loss_and_surrogate_loss`` but stores it as
``_differentiable_loss``, so every call builds and traces a new function: the "JIT" objective
re-traces the model at every step and runs about 3x slower than no JIT at all.
:class:`JitTraceMeanField_ELBO` marks the cache as built, so the loss is traced once; if Pyro
fixes the attribute, the subclass changes nothing.

Pyro's JIT objectives also key their compiled traces on ``id(model)`` and ``id(guide)``: pass the
*same* callables at every step (a bound method such as ``vae.model`` is a new object at every
attribute access). :class:`pyro_vae.distributed.ObjectiveModule` holds them once.
"""

from __future__ import annotations

import pyro.infer


class JitTraceMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """``pyro.infer.JitTraceMeanField_ELBO`` that compiles its loss once (see the module docstring)."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if getattr(self, "_differentiable_loss", None) is not None:
            # The attribute the parent class checks before rebuilding its compiled loss.
            self._loss_and_surrogate_loss = self._differentiable_loss
        return super().differentiable_loss(model, guide, *args, **kwargs)
