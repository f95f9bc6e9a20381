"""The edge where names become modules: configurations, registries and model construction.

Model code never compares likelihood, prior or model names; the command line and checkpoints
store a :class:`RunConfig` and this module turns it into networks. To make a new likelihood
available by name, add a factory to :data:`LIKELIHOODS`; code that builds models directly needs
no registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyro.infer
from torch import nn

from .cvae import (
    CVAE,
    ConditionalDecoder,
    ConditionalEncoder,
    ConditionNet,
    LearnedConditionalPrior,
    Regressor,
)
from .data import IMAGE_SIDE, MIDDLE_COLUMN, NUM_PIXELS
from .errors import ConfigError
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLearnedLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    Likelihood,
)
from .nets import Decoder, GaussianEncoder
from .objectives import JitTraceMeanField_ELBO
from .priors import MixtureOfGaussiansPrior, ScaledNormalPrior, StandardNormalPrior, VampPrior
from .vae import VAE

#: The tutorial's network (section 4.1: Caffe's MNIST autoencoder with ReLUs).
DEFAULT_HIDDEN_SIZES = (1000, 500, 250)
DEFAULT_Z_DIM = 30
DEFAULT_SIGMA = 0.1
#: The CVAE's conditioning network h(X): 28 column pixels -> 500 -> 250 features.
DEFAULT_CONDITION_SIZES = (500,)
DEFAULT_CONDITION_DIM = 250


class _Config:
    """Shared dict round trip of the frozen configuration dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _check_sizes(name: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in sizes)
    if any(s < 1 for s in sizes):
        raise ConfigError(f"{name} must be >= 1, got {list(sizes)}")
    return sizes


def _check_choice(kind: str, name: str, registry: dict) -> None:
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(registry)}")


@dataclass(frozen=True)
class VAEConfig(_Config):
    """Sizes and choices that define a VAE; stored in ``config.json`` and in checkpoints.

    The decoder mirrors the encoder: ``z_dim -> reversed(hidden_sizes) -> x_dim``.
    """

    z_dim: int = DEFAULT_Z_DIM
    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES
    likelihood: str = "bernoulli"
    #: Gaussian: the fixed standard deviation; gaussian-learned: its initial value; laplace: the scale.
    sigma: float = DEFAULT_SIGMA
    sigma_per_pixel: bool = False  # gaussian-learned: one sigma per pixel instead of one shared
    prior: str = "standard"
    prior_scale: float = 1.0  # the lambda of the scaled prior N(0, lambda^2 I)
    num_components: int = 10  # mixture components, or VampPrior pseudo-inputs
    x_dim: int = NUM_PIXELS

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", _check_sizes("hidden sizes", self.hidden_sizes))
        if self.z_dim < 1:
            raise ConfigError(f"z_dim must be >= 1, got {self.z_dim}")
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        _check_choice("prior", self.prior, PRIORS)
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be positive, got {self.sigma}")
        if not self.prior_scale > 0:
            raise ConfigError(f"prior scale must be positive, got {self.prior_scale}")
        if self.num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {self.num_components}")


@dataclass(frozen=True)
class CVAEConfig(_Config):
    """Sizes and choices of the digit-completion CVAE and of its regressor baseline (section 5).

    X is image column ``column`` (28 pixels), Y the other 27 columns (756 pixels). The encoder
    Q(z|Y, X) reads [X, Y] through ``hidden_sizes``; the decoder reads [z, h(X)] through the mirrored
    sizes; h(X) = ReLU(MLP(X)) with ``condition_sizes`` hidden layers and ``condition_dim`` outputs.
    The regressor uses h(X) and the decoder layers without z.
    """

    z_dim: int = DEFAULT_Z_DIM
    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES
    condition_sizes: tuple[int, ...] = DEFAULT_CONDITION_SIZES
    condition_dim: int = DEFAULT_CONDITION_DIM
    column: int = MIDDLE_COLUMN
    prior: str = "standard"
    likelihood: str = "bernoulli"
    sigma: float = DEFAULT_SIGMA

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", _check_sizes("hidden sizes", self.hidden_sizes))
        object.__setattr__(self, "condition_sizes", _check_sizes("condition sizes", self.condition_sizes))
        if self.z_dim < 1 or self.condition_dim < 1:
            raise ConfigError(f"z_dim and condition_dim must be >= 1, got {self.z_dim}, {self.condition_dim}")
        if not 0 <= self.column < IMAGE_SIDE:
            raise ConfigError(f"column index {self.column} is out of range; choose 0..{IMAGE_SIDE - 1}")
        _check_choice("prior", self.prior, CONDITIONAL_PRIORS)
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be positive, got {self.sigma}")

    @property
    def x_dim(self) -> int:
        return IMAGE_SIDE

    @property
    def y_dim(self) -> int:
        return NUM_PIXELS - IMAGE_SIDE


#: likelihood name -> factory taking the model config and the data dimension. The CLI's
#: ``--likelihood`` choices; bernoulli sees binarized pixels, the others grayscale intensities.
LIKELIHOODS: dict[str, Callable[[Any, int], Likelihood]] = {
    "bernoulli": lambda config, dim: BernoulliLikelihood(),
    "gaussian": lambda config, dim: GaussianLikelihood(config.sigma),
    "gaussian-learned": lambda config, dim: GaussianLearnedLikelihood(
        dim, per_pixel=getattr(config, "sigma_per_pixel", False), init_sigma=config.sigma
    ),
    "continuous-bernoulli": lambda config, dim: ContinuousBernoulliLikelihood(),
    "laplace": lambda config, dim: LaplaceLikelihood(config.sigma),
}

#: VAE prior name -> factory taking the config and the encoder (the VampPrior shares it).
PRIORS: dict[str, Callable[[VAEConfig, nn.Module], nn.Module]] = {
    "standard": lambda config, encoder: StandardNormalPrior(config.z_dim),
    "scaled": lambda config, encoder: ScaledNormalPrior(config.z_dim, config.prior_scale),
    "mixture": lambda config, encoder: MixtureOfGaussiansPrior(config.z_dim, config.num_components),
    "vamp": lambda config, encoder: VampPrior(encoder, config.num_components, config.x_dim),
}

#: CVAE prior name -> factory: the tutorial's N(0, I), or Sohn et al.'s learned P(z|X).
CONDITIONAL_PRIORS: dict[str, Callable[[CVAEConfig], nn.Module]] = {
    "standard": lambda config: StandardNormalPrior(config.z_dim),
    "conditional": lambda config: LearnedConditionalPrior(config.condition_dim, config.z_dim),
}

#: objective name -> ELBO class. ``trace`` (the default) is the tutorial's one-sample estimator;
#: ``meanfield`` uses the closed-form KL of Eq. 7 where the prior and guide allow it; the ``jit-``
#: variants compile the loss with ``torch.jit.trace``.
OBJECTIVES: dict[str, type[pyro.infer.ELBO]] = {
    "trace": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
    "jit-trace": pyro.infer.JitTrace_ELBO,
    "jit-meanfield": JitTraceMeanField_ELBO,  # Pyro's, fixed to compile once
}


def build_objective(name: str) -> pyro.infer.ELBO:
    """The ELBO object for an objective name (see :data:`OBJECTIVES`)."""
    _check_choice("objective", name, OBJECTIVES)
    if name.startswith("jit-"):
        # Tracing emits TracerWarnings for Pyro's shape checks, which are expected here.
        return OBJECTIVES[name](ignore_jit_warnings=True)
    return OBJECTIVES[name]()


def build_vae(config: VAEConfig, *, name: str = "vae") -> VAE:
    """Build the encoder, decoder and prior described by ``config`` (freshly initialized)."""
    likelihood = LIKELIHOODS[config.likelihood](config, config.x_dim)
    encoder = GaussianEncoder(config.x_dim, config.hidden_sizes, config.z_dim)
    decoder = Decoder(config.z_dim, tuple(reversed(config.hidden_sizes)), config.x_dim, likelihood)
    return VAE(encoder, decoder, PRIORS[config.prior](config, encoder), name=name)


def build_cvae(config: CVAEConfig, *, name: str = "cvae") -> CVAE:
    """The tutorial's CVAE for completing a digit from one column (section 5)."""
    likelihood = LIKELIHOODS[config.likelihood](config, config.y_dim)
    condition_net = ConditionNet(config.x_dim, config.condition_sizes, config.condition_dim)
    encoder = ConditionalEncoder(config.x_dim, config.y_dim, config.hidden_sizes, config.z_dim)
    decoder = ConditionalDecoder(
        config.z_dim, config.condition_dim, tuple(reversed(config.hidden_sizes)), config.y_dim, likelihood
    )
    return CVAE(encoder, decoder, CONDITIONAL_PRIORS[config.prior](config), condition_net, name=name)


def build_regressor(config: CVAEConfig, *, name: str = "regressor") -> Regressor:
    """The regressor baseline: the CVAE's conditioning network and decoder layers, without z."""
    likelihood = LIKELIHOODS[config.likelihood](config, config.y_dim)
    condition_net = ConditionNet(config.x_dim, config.condition_sizes, config.condition_dim)
    decoder = Decoder(config.condition_dim, tuple(reversed(config.hidden_sizes)), config.y_dim, likelihood)
    return Regressor(condition_net, decoder, name=name)


#: run kind -> (model configuration class, builder). ``RunConfig.kind`` picks one.
MODEL_KINDS: dict[str, tuple[type, Callable[..., nn.Module]]] = {
    "vae": (VAEConfig, build_vae),
    "cvae": (CVAEConfig, build_cvae),
    "regressor": (CVAEConfig, build_regressor),
}


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Optimization settings of a run; stored beside the model configuration."""

    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    objective: str = "trace"
    subset: int | None = None
    eval_seed: int = 1234


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild and continue a run: model kind and settings, training settings."""

    kind: str = "vae"
    model: Any = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _check_choice("model kind", self.kind, MODEL_KINDS)
        expected = MODEL_KINDS[self.kind][0]
        if not isinstance(self.model, expected):
            raise ConfigError(
                f"a {self.kind!r} run needs a {expected.__name__}, got {type(self.model).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        try:
            kind = values["kind"]
            _check_choice("model kind", kind, MODEL_KINDS)
            model = MODEL_KINDS[kind][0].from_dict(values["model"])
            return cls(kind=kind, model=model, train=TrainConfig.from_dict(values["train"]))
        except (KeyError, TypeError) as error:
            raise ConfigError(f"run configuration is incomplete or malformed ({error})") from None


def build_model(config: RunConfig) -> nn.Module:
    """The (freshly initialized) model of a run configuration."""
    return MODEL_KINDS[config.kind][1](config.model)
