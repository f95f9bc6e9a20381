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

from .distributions import FactorizedBernoulli, FactorizedContinuousBernoulli
from .errors import ConfigError, DataError


class Likelihood(nn.Module):
    """Base class of likelihood heads (see the module docstring for the contract)."""

    params_per_dim: int = 1
    binary_data: bool = False
    #: Support of one data value (one pixel); :meth:`check_data` tests data against it.
    support = constraints.real
    #: Whether the head's mean is sigmoid(decoder output), so that :meth:`output_bias` exists.
    sigmoid_mean: bool = False

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

    def output_bias(self, data_mean: torch.Tensor, eps: float = 1e-3) -> torch.Tensor | None:
        """The decoder output bias at which the head's mean is ``data_mean``: logit(mean), or ``None``.

        Clamped to [eps, 1 - eps]: MNIST's border pixels have mean 0, whose logit is -infinity.
        """
        if not self.sigmoid_mean or self.params_per_dim != 1:
            return None
        return torch.logit(data_mean.clamp(eps, 1 - eps))


class DecoderLikelihood:
    """Mixin for a module with a ``decoder``: ``likelihood`` is its head (what the data must be)."""

    @property
    def likelihood(self) -> Likelihood:
        return self.decoder.likelihood


class BernoulliLikelihood(Likelihood):
    r"""P(x|z) = prod_i Bernoulli(x_i | sigmoid(f_i(z))), for binary pixels.

    Used on dynamically binarized MNIST, where it is a valid likelihood; on grayscale
    intensities it is not (Loaiza-Ganem & Cunningham, 2019), and :meth:`check_data` refuses them.
    """

    sigmoid_mean = True

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

    ``link`` maps the decoder output to the mean f(z): ``"sigmoid"`` (default) keeps decoder
    means valid pixel intensities in [0, 1]; ``"identity"`` reads the output as the mean itself,
    for data on the whole real line (Appendix A's 1D study). ``sigma`` weighs reconstruction
    against the KL term (tutorial section 2.4.3):
    log P(x|z) = -||x - f(z)||^2 / (2 sigma^2) - D log(sqrt(2 pi) sigma).
    """

    LINKS = {"sigmoid": torch.sigmoid, "identity": lambda params: params}

    def __init__(self, sigma: float, *, link: str = "sigmoid"):
        super().__init__()
        if not sigma > 0:
            raise ConfigError(f"sigma must be positive, got {sigma}")
        if link not in self.LINKS:
            raise ConfigError(f"unknown link {link!r}; available: {', '.join(self.LINKS)}")
        self.sigma = float(sigma)
        self.link = link
        self.sigmoid_mean = link == "sigmoid"  # output_bias exists for the sigmoid link only

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Normal(self.LINKS[self.link](params), self.sigma).to_event(1)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, link={self.link}"


class GaussianLearnedLikelihood(Likelihood):
    r"""P(x|z) = N(x | f(z), diag(sigma^2)) with sigma learned: one shared value or one per pixel.

    ``f(z) = sigmoid(decoder output)``; ``sigma = min_sigma + softplus(raw)``. The floor keeps the
    density bounded: MNIST's background pixels are exactly 0, and with an unbounded sigma -> 0 the
    likelihood of a decoder that predicts them would grow without limit. Learning sigma removes
    the knob of section 2.4.3: the model picks its own reconstruction/KL trade-off.
    """

    sigmoid_mean = True

    def __init__(
        self, x_dim: int, *, per_pixel: bool = False, init_sigma: float = 0.1, min_sigma: float = 1e-3
    ):
        super().__init__()
        if not init_sigma > min_sigma > 0:
            raise ValueError(f"need init_sigma > min_sigma > 0, got {init_sigma} and {min_sigma}")
        self.min_sigma = float(min_sigma)
        start = torch.tensor(init_sigma - min_sigma)
        raw = torch.log(torch.expm1(start))  # softplus^{-1}
        self.raw_sigma = nn.Parameter(raw.expand(x_dim if per_pixel else 1).clone())

    @property
    def sigma(self) -> torch.Tensor:
        return self.min_sigma + torch.nn.functional.softplus(self.raw_sigma)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        loc = torch.sigmoid(params)
        return dist.Normal(loc, self.sigma.expand_as(loc)).to_event(1)

    def extra_repr(self) -> str:
        return f"per_pixel={self.raw_sigma.numel() > 1}, min_sigma={self.min_sigma}"


class ContinuousBernoulliLikelihood(Likelihood):
    r"""P(x|z) = prod_i CB(x_i | lambda_i(z)), the continuous Bernoulli of Loaiza-Ganem & Cunningham (2019).

    The properly normalized counterpart of "Bernoulli cross-entropy on grayscale pixels": a density
    on [0, 1] for intensities, whose normalizer C(lambda) is computed stably near lambda = 1/2
    (:func:`~pyro_vae.distributions.continuous_bernoulli_log_normalizer`).
    """

    support = constraints.unit_interval

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return FactorizedContinuousBernoulli(logits)

    def _data_hint(self) -> str:
        return "the continuous Bernoulli needs intensities in [0, 1]"


class LaplaceLikelihood(Likelihood):
    r"""P(x|z) = prod_i Laplace(x_i | f_i(z), b) with a fixed scale b: an L1 reconstruction loss.

    log P(x|z) = -||x - f(z)||_1 / b - D log(2 b), ``f(z) = sigmoid(decoder output)``.
    """

    sigmoid_mean = True

    def __init__(self, scale: float):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return dist.Laplace(torch.sigmoid(params), self.scale).to_event(1)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
