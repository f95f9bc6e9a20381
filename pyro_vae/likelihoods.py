"""Likelihood heads: they turn the decoder's raw output into a distribution over one datapoint.

A head is a small ``nn.Module`` with

- ``params_per_dim``: how many decoder outputs it reads per data dimension;
- ``binary_data``: whether it scores binary data (the training loop then binarizes every batch
  afresh, and evaluation uses a fixed seeded binarization);
- ``forward(params) -> Distribution`` whose event covers one datapoint (``to_event(1)``);
- ``support``: the constraint one data value must satisfy; ``check_data(x)`` refuses data
  outside it with a message saying what to use instead.

Adding a likelihood is writing one such class; the model, guide and estimators do not change.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from .distributions import FactorizedBernoulli
from .errors import DataError


class Likelihood(nn.Module):
    """Base class of likelihood heads (see the module docstring for the contract)."""

    params_per_dim: int = 1
    binary_data: bool = False
    #: Support of one data value (one pixel); :meth:`check_data` tests data against it.
    support = constraints.real

    def forward(self, params: torch.Tensor) -> dist.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise :class:`~pyro_vae.errors.DataError` unless every value of ``x`` is in ``support``."""
        inside = self.support.check(x)
        if not bool(inside.all()):
            bad = x[~inside][:3].tolist()
            raise DataError(
                f"{type(self).__name__} cannot score these data: values such as {bad} lie "
                f"outside its support ({self.support}); {self._data_hint()}"
            )

    def _data_hint(self) -> str:
        return "choose a likelihood whose support contains the data"


class BernoulliLikelihood(Likelihood):
    r"""P(x|z) = prod_i Bernoulli(x_i | sigmoid(f_i(z))), for binary pixels.

    Used on dynamically binarized MNIST, where it is a valid likelihood; on grayscale
    intensities it is not (Loaiza-Ganem & Cunningham, 2019), and :meth:`check_data` refuses them.
    """

    binary_data = True
    support = constraints.boolean

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        # = dist.Bernoulli(logits=logits).to_event(1), with a fused log-density (about 2x faster)
        return FactorizedBernoulli(logits)

    def _data_hint(self) -> str:
        return (
            "binarize the images first (x ~ Bernoulli(intensity), pyro_vae.data.binarize) "
            "or use a continuous likelihood such as gaussian for grayscale intensities"
        )


class GaussianLikelihood(Likelihood):
    r"""P(x|z) = N(x | f(z), sigma^2 I) with a fixed sigma, the tutorial's Eq. 1 likelihood.

    ``f(z) = sigmoid(decoder output)`` so that decoder means are valid intensities in [0, 1].
    ``sigma`` weighs reconstruction against the KL term (tutorial section 2.4.3):
    log P(x|z) = -||x - f(z)||^2 / (2 sigma^2) - D log(sqrt(2 pi) sigma).
    """

    def __init__(self, sigma: float):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Normal(torch.sigmoid(params), self.sigma).to_event(1)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
