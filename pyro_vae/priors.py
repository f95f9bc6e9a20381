"""Priors P(z): modules whose ``forward()`` returns a distribution with event shape ``(z_dim,)``.

A conditional model (the CVAE) calls ``prior(h)`` with features ``h`` of its input; priors that do
not depend on the input accept ``h`` and use only its batch shape.

A prior is a module so that it moves with ``.to(device)``, can hold learnable parameters, and is
registered by the model with ``pyro.module``; a new prior is a new small module.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
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


class ScaledNormalPrior(nn.Module):
    """P(z) = N(0, lambda^2 I): the prior of section 2.4.3 that, the tutorial argues, changes nothing.

    Any VAE with this prior equals one with N(0, I) after rescaling (f'(z') = f(z'/lambda),
    mu' = lambda mu, Sigma' = lambda^2 Sigma); ``analysis.prior_scale`` measures it.
    """

    def __init__(self, z_dim: int, scale: float):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"prior scale must be positive, got {scale}")
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.full((z_dim,), float(scale)))

    def forward(self, context: torch.Tensor | None = None) -> dist.Distribution:
        prior = dist.Normal(self.loc, self.scale).to_event(1)
        return prior if context is None else prior.expand(context.shape[:-1])

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, scale={float(self.scale[0])}"


class MixtureOfGaussiansPrior(nn.Module):
    r"""A learnable mixture P(z) = sum_k pi_k N(z | mu_k, diag sigma_k^2).

    Weights, means and standard deviations are trained with the model. There is no closed-form
    KL(Q || P): ``Trace_ELBO`` estimates it by sampling; ``TraceMeanField_ELBO`` falls back to the
    same. Means start spread as N(0, I) draws, scales at 1.
    """

    def __init__(self, z_dim: int, num_components: int):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.z_dim = z_dim
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, z_dim))
        self.raw_scales = nn.Parameter(
            torch.full((num_components, z_dim), math.log(math.e - 1))
        )  # softplus = 1

    def forward(self, context: torch.Tensor | None = None) -> dist.Distribution:
        components = dist.Normal(self.locs, F.softplus(self.raw_scales) + 1e-5).to_event(1)
        prior = dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
        return prior if context is None else prior.expand(context.shape[:-1])


class VampPrior(nn.Module):
    r"""The VampPrior P(z) = (1/K) sum_k Q(z | u_k) (Tomczak & Welling, 2018).

    A uniform mixture of the encoder's own posteriors at K learned pseudo-inputs u_k, which live
    in data space (``u = sigmoid(raw)``, so they are valid intensities). The encoder is shared
    with the guide, so the prior moves with it.
    """

    def __init__(self, encoder: nn.Module, num_components: int, x_dim: int):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.encoder = encoder
        # pseudo-inputs start as faint noise around intensity 0.5 (sigmoid of small values)
        self.raw_pseudo_inputs = nn.Parameter(0.01 * torch.randn(num_components, x_dim))

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.raw_pseudo_inputs)

    def forward(self, context: torch.Tensor | None = None) -> dist.Distribution:
        components = self.encoder(self.pseudo_inputs)  # batch (K,), event (z_dim,)
        weights = torch.zeros(self.raw_pseudo_inputs.shape[0], device=self.raw_pseudo_inputs.device)
        prior = dist.MixtureSameFamily(dist.Categorical(logits=weights), components)
        return prior if context is None else prior.expand(context.shape[:-1])
