"""Distributions over whole datapoints with fused log-densities.

``Bernoulli(logits).to_event(1)`` scores an image with torch's elementwise binary cross-entropy:
it materializes the broadcast target and several temporaries of shape ``(K, B, D)`` before
summing over pixels. :class:`FactorizedBernoulli` is the same distribution with the identity

    log p(x | l) = sum_i [x_i l_i - softplus(l_i)] = <x, l> - sum_i softplus(l_i),

where <x, l> is a batched dot product (no temporary) and the softplus sum needs one pass over
the logits. Importance sampling with K particles scores (K, B, D) logits per batch, so this is
the hot loop of evaluation, and of training too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import lazy_property


class FactorizedBernoulli(TorchDistribution):
    """Independent Bernoulli variables over the last dimension, parameterized by logits.

    Equivalent to ``pyro.distributions.Bernoulli(logits=logits).to_event(1)``: batch shape
    ``logits.shape[:-1]``, event shape ``logits.shape[-1:]``, support binary vectors.
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 1)}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        if logits.dim() < 1:
            raise ValueError("logits must have at least one dimension (the event)")
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FactorizedBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(FactorizedBernoulli, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @lazy_property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # <x, l> by einsum broadcasts value (B, D) against logits (K, B, D) without a copy.
        dot = torch.einsum("...d,...d->...", value, self.logits)
        return dot - F.softplus(self.logits).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (F.softplus(self.logits) - self.logits * self.probs).sum(-1)
