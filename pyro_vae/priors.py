"""Priors P(z): modules whose ``forward()`` returns a distribution with event shape ``(z_dim,)``.

A conditional model (the CVAE) calls ``prior(h)`` with features ``h`` of its input; priors that do
not depend on the input accept ``h`` and use only its batch shape.

A prior is a module so that it moves with ``.to(device)``, can hold learnable parameters, and is
registered by the model with ``pyro.module``; a new prior is a new small module.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormalPrior(nn.Module):
    """P(z) = N(0, I), the tutorial's prior (section 2)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        # Buffers, not parameters: they follow the module's device and are saved in checkpoints.
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, context: torch.Tensor | None = None) -> dist.Distribution:
        """N(0, I) over z. ``context`` (a conditional model's features, ``(B, ...)``) only sets the
        batch shape: this prior does not depend on it, as in the tutorial's CVAE (section 3)."""
        prior = dist.Normal(self.loc, self.scale).to_event(1)
        return prior if context is None else prior.expand(context.shape[:-1])

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}"
