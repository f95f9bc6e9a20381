r"""Guide families Q(z|x): the third extension axis beside priors and likelihoods.

Every guide network here is *amortized* in two steps, which is what lets
:mod:`analysis.inference_gap` separate the two sources of the ELBO's gap (Cremer, Li & Duvenaud,
2018):

1. ``local_parameters(x)``: an MLP maps each datapoint to a vector lambda(x) of local
   parameters, shape ``(..., num_local_parameters)``;
2. ``distribution(lambda)``: the family turns lambda into a distribution over z with event shape
   ``(z_dim,)`` that can ``rsample`` and ``log_prob``; ``forward(x)`` is the composition.

The best member of the family for one image, q*, maximizes the ELBO over lambda with everything
else fixed; the amortized guide reaches only the lambda(x) its network outputs.

Families:

- ``gaussian``: N(mu, diag(sigma^2)), the tutorial's encoder (:class:`~pyro_vae.nets.GaussianEncoder`).
- ``full-cov``: N(mu, L L^T) with L lower-triangular, a positive diagonal (softplus) and free
  entries below it: every Gaussian.
- ``iaf``: an inverse autoregressive flow (Kingma et al., 2016) on top of the diagonal
  Gaussian, z = T_L o ... o T_1(eps), eps ~ N(mu, diag(sigma^2)), each T_l an affine
  autoregressive transform (Pyro's ``ConditionalAffineAutoregressive``, the numerically
  stable sigmoid-gated variant) whose MADE network also reads a per-datapoint context h(x),
  part of lambda. The flow networks' weights are global (shared by all datapoints).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn

from .nets import MIN_SCALE, MLP


class FullCovarianceEncoder(nn.Module):
    r"""Q(z|x) = N(mu(x), L(x) L(x)^T), L lower-triangular with a positive diagonal.

    The MLP emits ``2 * z_dim + z_dim (z_dim - 1) / 2`` numbers per datapoint: the mean, the
    unconstrained diagonal of L (``softplus`` + :data:`~pyro_vae.nets.MIN_SCALE`) and the entries
    below it. Any covariance has such a Cholesky factor, so q* of this family is the exact
    posterior whenever that is Gaussian.
    """

    def __init__(self, x_dim: int, hidden_sizes: Sequence[int], z_dim: int, activation: str = "relu"):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.num_off_diagonal = z_dim * (z_dim - 1) // 2
        self.num_local_parameters = 2 * z_dim + self.num_off_diagonal
        self.body = MLP(x_dim, hidden_sizes, self.num_local_parameters, activation)
        rows, cols = torch.tril_indices(z_dim, z_dim, offset=-1)
        self.register_buffer("tril_rows", rows, persistent=False)
        self.register_buffer("tril_cols", cols, persistent=False)

    def local_parameters(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        z_loc, raw_diagonal, below = params.split([self.z_dim, self.z_dim, self.num_off_diagonal], dim=-1)
        scale_tril = params.new_zeros(params.shape[:-1] + (self.z_dim, self.z_dim))
        scale_tril[..., self.tril_rows, self.tril_cols] = below
        scale_tril = scale_tril + torch.diag_embed(F.softplus(raw_diagonal) + MIN_SCALE)
        return dist.MultivariateNormal(z_loc, scale_tril=scale_tril)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        return self.distribution(self.local_parameters(x))


class IAFEncoder(nn.Module):
    r"""Q(z|x): a diagonal Gaussian pushed through ``flow_layers`` inverse autoregressive flows.

    .. math::  \epsilon \sim N(\mu(x), \mathrm{diag}(\sigma(x)^2)), \quad
               z = T_L \circ \dots \circ T_1(\epsilon), \quad
               T_l(u)_i = s_{l,i}\, u_i + (1 - s_{l,i})\, m_{l,i}, \quad
               (s_l, m_l) = \mathrm{MADE}_l(u_{<i}, h(x)),

    with s the sigmoid gate of Kingma et al. (2016, Eq. 14) and log q(z|x) = log N(eps) -
    sum_l log|det dT_l/du|, exact and cheap in the sampling direction. lambda(x) = (mu, raw sigma,
    h) with ``context_dim`` entries of h (default ``z_dim``). Each MADE has one hidden layer of
    ``flow_hidden`` units (default max(32, 2 z_dim)) and its own random order of the inputs.
    """

    def __init__(
        self,
        x_dim: int,
        hidden_sizes: Sequence[int],
        z_dim: int,
        activation: str = "relu",
        *,
        flow_layers: int = 2,
        context_dim: int | None = None,
        flow_hidden: int | None = None,
    ):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.context_dim = context_dim or z_dim
        self.num_local_parameters = 2 * z_dim + self.context_dim
        self.body = MLP(x_dim, hidden_sizes, self.num_local_parameters, activation)
        hidden = flow_hidden or max(32, 2 * z_dim)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(z_dim, self.context_dim, hidden_dims=[hidden], stable=True)
            for _ in range(flow_layers)
        )

    def local_parameters(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        z_loc, raw_scale, context = params.split([self.z_dim, self.z_dim, self.context_dim], dim=-1)
        base = dist.Normal(z_loc, F.softplus(raw_scale) + MIN_SCALE).to_event(1)
        return dist.TransformedDistribution(base, [flow.condition(context) for flow in self.flows])

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        return self.distribution(self.local_parameters(x))


@torch.no_grad()
def guide_location(q: dist.Distribution) -> torch.Tensor:
    """A point that stands for Q(z|x) in figures: its mean where it has one in closed form, else
    the base distribution's mean pushed through the flow (the flow's image of its centre)."""
    if isinstance(q, dist.TransformedDistribution):
        z = q.base_dist.mean
        for transform in q.transforms:
            z = transform(z)
        return z
    return q.mean


@torch.no_grad()
def guide_mean(q: dist.Distribution, *, num_samples: int = 64) -> torch.Tensor:
    """E_q[z]: exact for a Gaussian family, a ``num_samples`` Monte Carlo average for a flow."""
    if isinstance(q, dist.TransformedDistribution):
        return q.sample((num_samples,)).mean(0)
    return q.mean


@torch.no_grad()
def guide_covariance(q: dist.Distribution, *, num_samples: int = 256) -> torch.Tensor:
    """Cov_q[z], ``(..., z_dim, z_dim)``: exact for a Gaussian family, Monte Carlo for a flow."""
    if isinstance(q, dist.TransformedDistribution):
        z = q.sample((num_samples,))
        centred = z - z.mean(0)
        return torch.einsum("s...i,s...j->...ij", centred, centred) / (num_samples - 1)
    if isinstance(q, dist.MultivariateNormal):
        return q.covariance_matrix
    return torch.diag_embed(q.variance)
