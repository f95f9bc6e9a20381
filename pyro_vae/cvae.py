r"""The conditional VAE of the tutorial's section 3, and the regressor it is compared with (§5).

Given an input X and an output Y (here: the middle column of a digit and the other 27 columns),

    z ~ P(z | X)   (default N(0, I), independent of X, as in the tutorial),
    Y ~ P(Y | z, X) = decoder(z, h(X)),

with the guide Q(z | Y, X) = encoder(X, Y). ``Trace_ELBO`` maximizes Eq. 15,
E_Q[log P(Y|z, X)] - KL(Q(z|Y, X) || P(z|X)). With ``y=None`` the guide samples z from the prior,
so ``pyro.infer.Predictive(model, guide=guide, ...)`` draws completions Y ~ P(Y|X).

The regressor uses the same conditioning network and decoder layers without z: P(Y|X) =
decoder(h(X)) is then a single factorized distribution, and its log-likelihood is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .likelihoods import DecoderLikelihood, Likelihood
from .nets import MIN_SCALE, MLP, Decoder, GaussianEncoder


class ConditionNet(nn.Module):
    """h(X): an MLP with a ReLU on its output, the features both models condition on."""

    def __init__(self, x_dim: int, hidden_sizes: Sequence[int], out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.body = MLP(x_dim, hidden_sizes, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x))


class ConditionalEncoder(nn.Module):
    """Q(z | Y, X) = N(mu(X, Y), diag sigma(X, Y)^2): a Gaussian encoder of the concatenation [X, Y]."""

    def __init__(self, x_dim: int, y_dim: int, hidden_sizes: Sequence[int], z_dim: int):
        super().__init__()
        self.gaussian = GaussianEncoder(x_dim + y_dim, hidden_sizes, z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self.gaussian(torch.cat([x, y], dim=-1))


class ConditionalDecoder(DecoderLikelihood, nn.Module):
    """P(Y | z, X) = likelihood(f([z, h(X)])): the decoder reads z beside the condition features.

    ``h`` is broadcast against the leading (particle) dimensions of ``z``.
    """

    def __init__(
        self, z_dim: int, h_dim: int, hidden_sizes: Sequence[int], y_dim: int, likelihood: Likelihood
    ):
        super().__init__()
        self.decoder = Decoder(z_dim + h_dim, hidden_sizes, y_dim, likelihood)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> dist.Distribution:
        h = h.expand(*z.shape[:-1], h.shape[-1])
        return self.decoder(torch.cat([z, h], dim=-1))


class LearnedConditionalPrior(nn.Module):
    """P(z | X) = N(mu(h(X)), diag sigma(h(X))^2), the conditional prior of Sohn et al. (2015).

    An alternative to the tutorial's N(0, I): pass it as the CVAE's ``prior``; the model and the
    guide do not change.
    """

    def __init__(self, h_dim: int, z_dim: int, hidden_sizes: Sequence[int] = (250,)):
        super().__init__()
        self.z_dim = z_dim
        self.body = MLP(h_dim, hidden_sizes, 2 * z_dim)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, raw_scale = self.body(h).split(self.z_dim, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + MIN_SCALE).to_event(1)


class CVAE(DecoderLikelihood, nn.Module):
    """Conditional VAE assembled from networks that return distributions.

    Parameters
    ----------
    encoder : nn.Module
        ``(x, y) -> Distribution over z`` (Q(z|Y, X)).
    decoder : nn.Module
        ``(z, h) -> Distribution over y`` (P(Y|z, X)).
    prior : nn.Module
        ``prior(h) -> Distribution over z``; :class:`~pyro_vae.priors.StandardNormalPrior` ignores
        ``h`` (the tutorial's choice), :class:`LearnedConditionalPrior` uses it.
    condition_net : nn.Module
        ``x -> h``, features of the input shared by the prior and the decoder.
    name : str
        Prefix of the networks' names in Pyro's parameter store.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        condition_net: nn.Module,
        *,
        name: str = "cvae",
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.condition_net = condition_net
        self.name = name

    def _register_model_networks(self) -> None:
        pyro.module(f"{self.name}.condition_net", self.condition_net)
        pyro.module(f"{self.name}.prior", self.prior)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self._register_model_networks()
        pyro.module(f"{self.name}.decoder", self.decoder)
        h = self.condition_net(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(h))
            pyro.sample("y", self.decoder(z, h), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if y is None:
            # Test time (Fig. 6, right): no Y to encode, so z comes from the prior P(z|X).
            self._register_model_networks()
            h = self.condition_net(x)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", self.prior(h))
            return
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(x, y))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Decoder means E[Y | z, X] for z ~ P(z|X): ``(num_samples, B, y_dim)`` completions."""
        h = self.condition_net(x)
        z = self.prior(h).sample((num_samples,))  # (S, B, z_dim)
        return self.decoder(z, h).mean


class Regressor(DecoderLikelihood, nn.Module):
    """The baseline of section 5: P(Y|X) = likelihood(f(h(X))), the CVAE's networks without z.

    ``model(x, y)`` observes ``"y"`` in the same ``pyro.plate("data")``; the guide has no latent
    variables, so ``Trace_ELBO`` is the exact negative log-likelihood and the estimators return
    the exact log P(Y|X) for any number of particles.
    """

    def __init__(self, condition_net: nn.Module, decoder: nn.Module, *, name: str = "regressor"):
        super().__init__()
        self.condition_net = condition_net
        self.decoder = decoder
        self.name = name

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module(f"{self.name}.condition_net", self.condition_net)
        pyro.module(f"{self.name}.decoder", self.decoder)
        h = self.condition_net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", self.decoder(h), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pass  # no latent variables

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """The predicted mean E[Y|X], repeated ``num_samples`` times: ``(num_samples, B, y_dim)``."""
        return self.decoder(self.condition_net(x)).mean.expand(num_samples, x.shape[0], -1)
