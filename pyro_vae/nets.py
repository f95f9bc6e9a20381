"""Neural networks of the VAE: a multilayer perceptron, the Gaussian encoder and the decoder.

Contract (README, "Extending"): networks return distributions. The encoder maps ``x`` to a
distribution over ``z`` with event shape ``(z_dim,)``; the decoder maps ``z`` to the likelihood's
distribution over one datapoint. Leading batch dimensions are carried through, so the same
networks serve one particle per datapoint in training and ``(K, B)`` particles in evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .likelihoods import Likelihood

#: Smallest standard deviation the encoder can output; keeps log q(z|x) finite in float32.
MIN_SCALE = 1e-5
#: Hidden-layer nonlinearities by name: the tutorial's network uses ReLU (section 4.1), the IWAE
#: paper's tanh (Burda et al., 2016, section 5).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Fully connected network ``in_dim -> hidden_sizes... -> out_dim`` with ``activation`` between layers.

    The output layer is linear: heads decide how to constrain it.
    """

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int, activation: str = "relu"):
        sizes = [in_dim, *hidden_sizes, out_dim]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)


class GaussianEncoder(nn.Module):
    r"""Q(z|x) = N(z | mu(x), diag(sigma(x)^2)), the tutorial's encoder (section 2.2).

    One MLP outputs ``2 * z_dim`` numbers: the mean and an unconstrained scale, mapped through
    ``softplus`` (plus :data:`MIN_SCALE`) so the standard deviation is positive and grows
    linearly rather than exponentially for large outputs.

    Returns ``Normal(z_loc, z_scale).to_event(1)``: batch shape = the input's leading shape,
    event shape ``(z_dim,)``.
    """

    def __init__(self, x_dim: int, hidden_sizes: Sequence[int], z_dim: int, activation: str = "relu"):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.num_local_parameters = 2 * z_dim
        self.body = MLP(x_dim, hidden_sizes, self.num_local_parameters, activation)

    def local_parameters(self, x: torch.Tensor) -> torch.Tensor:
        """lambda(x) = (mu, unconstrained sigma), ``(..., 2 z_dim)``: see :mod:`pyro_vae.guides`."""
        return self.body(x)

    def distribution(self, params: torch.Tensor) -> dist.Distribution:
        z_loc, raw_scale = params.split(self.z_dim, dim=-1)
        z_scale = F.softplus(raw_scale) + MIN_SCALE
        return dist.Normal(z_loc, z_scale).to_event(1)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        return self.distribution(self.local_parameters(x))


class Decoder(nn.Module):
    """P(x|z): an MLP ``f(z)`` followed by a likelihood head that turns ``f(z)`` into a distribution.

    The MLP emits ``likelihood.params_per_dim`` numbers per data dimension; the head reads them
    (logits for a Bernoulli, a mean for a Gaussian, ...). Swapping the head swaps the likelihood
    without touching the network, the model or the estimators.
    """

    def __init__(
        self,
        z_dim: int,
        hidden_sizes: Sequence[int],
        x_dim: int,
        likelihood: Likelihood,
        activation: str = "relu",
    ):
        super().__init__()
        self.z_dim = z_dim
        self.x_dim = x_dim
        self.body = MLP(z_dim, hidden_sizes, x_dim * likelihood.params_per_dim, activation)
        self.likelihood = likelihood

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return self.likelihood(self.body(z))

    @torch.no_grad()
    def init_output_bias(self, data_mean: torch.Tensor) -> bool:
        """Start the output layer's bias where the likelihood's mean equals the data mean.

        With f(z) = sigmoid(output), the bias logit(mean) makes an untrained decoder predict the
        average image, so the first steps learn structure rather than the pixel marginals (a
        common initialization of sigmoid outputs). Returns ``False`` (and changes nothing) for
        likelihoods without such a bias (:meth:`Likelihood.output_bias`).
        """
        bias = self.likelihood.output_bias(data_mean)
        if bias is None:
            return False
        self.body[-1].bias.copy_(bias.to(self.body[-1].bias))
        return True
