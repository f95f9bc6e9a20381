"""The edge where names become modules: configurations, registries and model construction.

Model code never compares likelihood or prior names; the command line and checkpoints store a
:class:`VAEConfig` and this module turns it into networks. To make a new likelihood available by
name, add a factory to :data:`LIKELIHOODS`; code that builds models directly needs no registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyro.infer

from .data import NUM_PIXELS
from .errors import ConfigError
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood
from .nets import Decoder, GaussianEncoder
from .priors import StandardNormalPrior
from .vae import VAE

#: The tutorial's network (section 4.1: Caffe's MNIST autoencoder with ReLUs).
DEFAULT_HIDDEN_SIZES = (1000, 500, 250)
DEFAULT_Z_DIM = 30
DEFAULT_SIGMA = 0.1


@dataclass(frozen=True)
class VAEConfig:
    """Sizes and choices that define a VAE; stored in ``config.json`` and in checkpoints.

    The decoder mirrors the encoder: ``z_dim -> reversed(hidden_sizes) -> x_dim``.
    """

    z_dim: int = DEFAULT_Z_DIM
    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES
    likelihood: str = "bernoulli"
    sigma: float = DEFAULT_SIGMA  # used by the Gaussian likelihood only
    x_dim: int = NUM_PIXELS

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.z_dim < 1:
            raise ConfigError(f"z_dim must be >= 1, got {self.z_dim}")
        if any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"hidden sizes must be >= 1, got {list(self.hidden_sizes)}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {self.likelihood!r}; available: {', '.join(LIKELIHOODS)}")
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be positive, got {self.sigma}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


#: likelihood name -> factory taking the config. The CLI's ``--likelihood`` choices.
LIKELIHOODS: dict[str, Callable[[VAEConfig], Likelihood]] = {
    "bernoulli": lambda config: BernoulliLikelihood(),
    "gaussian": lambda config: GaussianLikelihood(config.sigma),
}


#: objective name -> ELBO class. ``trace`` (the default) is the tutorial's one-sample estimator;
#: ``meanfield`` uses the closed-form KL of Eq. 7 where the prior and guide allow it; the ``jit-``
#: variants compile the loss with ``torch.jit.trace``.
OBJECTIVES: dict[str, type[pyro.infer.ELBO]] = {
    "trace": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
    "jit-trace": pyro.infer.JitTrace_ELBO,
    "jit-meanfield": pyro.infer.JitTraceMeanField_ELBO,
}


def build_objective(name: str) -> pyro.infer.ELBO:
    """The ELBO object for an objective name (see :data:`OBJECTIVES`)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; available: {', '.join(OBJECTIVES)}")
    if name.startswith("jit-"):
        # Tracing emits TracerWarnings for Pyro's shape checks, which are expected here.
        return OBJECTIVES[name](ignore_jit_warnings=True)
    return OBJECTIVES[name]()


def build_vae(config: VAEConfig, *, name: str = "vae") -> VAE:
    """Build the encoder, decoder and prior described by ``config`` (freshly initialized)."""
    likelihood = LIKELIHOODS[config.likelihood](config)
    encoder = GaussianEncoder(config.x_dim, config.hidden_sizes, config.z_dim)
    decoder = Decoder(config.z_dim, tuple(reversed(config.hidden_sizes)), config.x_dim, likelihood)
    prior = StandardNormalPrior(config.z_dim)
    return VAE(encoder, decoder, prior, name=name)


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings of a run; stored beside :class:`VAEConfig`."""

    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    objective: str = "trace"
    subset: int | None = None
    eval_seed: int = 1234

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild and continue a run: model, training and data settings."""

    kind: str = "vae"
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        try:
            return cls(
                kind=values["kind"],
                model=VAEConfig.from_dict(values["model"]),
                train=TrainConfig.from_dict(values["train"]),
            )
        except (KeyError, TypeError) as error:
            raise ConfigError(f"run configuration is incomplete or malformed ({error})") from None
