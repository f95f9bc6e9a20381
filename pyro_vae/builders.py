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
from .data import DATA_SPLITS, IMAGE_SIDE, MIDDLE_COLUMN, NUM_PIXELS, column_problem
from .errors import ConfigError
from .guides import FullCovarianceEncoder, IAFEncoder
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLearnedLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    Likelihood,
)
from .nets import ACTIVATIONS, Decoder, GaussianEncoder
from .objectives import IWAE_ELBO, IWAE_DReG_ELBO, JitIWAE_ELBO, JitTraceMeanField_ELBO
from .plugins import build_extension, import_plugins
from .priors import MixtureOfGaussiansPrior, ScaledNormalPrior, StandardNormalPrior, VampPrior
from .schedules import IWAE_SCHEDULE_EPOCHS, LR_SCHEDULES
from .vae import VAE

#: The tutorial's network (section 4.1: Caffe's MNIST autoencoder with ReLUs).
DEFAULT_HIDDEN_SIZES = (1000, 500, 250)
DEFAULT_Z_DIM = 30
DEFAULT_SIGMA = 0.1
#: The Laplace likelihood's scale b unless ``likelihood_options={"scale": b}`` says otherwise.
DEFAULT_LAPLACE_SCALE = 0.1
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
        return cls(**_laplace_scale_from_sigma({k: v for k, v in values.items() if k in known}))


def _laplace_scale_from_sigma(values: dict[str, Any]) -> dict[str, Any]:
    """Read a configuration written when ``sigma`` doubled as the Laplace scale: move it to its option."""
    sigma = values.get("sigma", DEFAULT_SIGMA)
    options = dict(values.get("likelihood_options") or {})
    if values.get("likelihood") == "laplace" and sigma != DEFAULT_SIGMA and "scale" not in options:
        return {**values, "sigma": DEFAULT_SIGMA, "likelihood_options": {**options, "scale": sigma}}
    return values


def _check_sigma(config: Any) -> None:
    if not config.sigma > 0:
        raise ConfigError(f"sigma must be positive, got {config.sigma}")
    if config.likelihood == "laplace" and config.sigma != DEFAULT_SIGMA:
        raise ConfigError(
            "sigma is the Gaussian likelihood's standard deviation; give the Laplace scale b as "
            "--likelihood-option scale=b (likelihood_options={'scale': b})"
        )


def _check_sizes(name: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in sizes)
    if any(s < 1 for s in sizes):
        raise ConfigError(f"{name} must be >= 1, got {list(sizes)}")
    return sizes


def _check_choice(kind: str, name: str, registry: dict) -> None:
    if name not in registry:
        from .plugins import load_entry_point_plugins

        load_entry_point_plugins()  # an installed package may register it
    if name not in registry:
        raise ConfigError(
            f"unknown {kind} {name!r}; available: {', '.join(registry)} (an extension's module is loaded "
            "with --plugin MODULE)"
        )


def _check_options(kind: str, options: Any) -> dict[str, Any]:
    if not isinstance(options, dict) or not all(isinstance(key, str) for key in options):
        raise ConfigError(f"{kind} options must be a mapping of names to values, got {options!r}")
    return dict(options)


@dataclass(frozen=True)
class VAEConfig(_Config):
    """Sizes and choices that define a VAE; stored in ``config.json`` and in checkpoints.

    The decoder mirrors the encoder: ``z_dim -> reversed(hidden_sizes) -> x_dim``.
    """

    z_dim: int = DEFAULT_Z_DIM
    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES
    likelihood: str = "bernoulli"
    #: Gaussian: the fixed standard deviation; gaussian-learned: its initial value. (The Laplace
    #: likelihood's scale is its own option: ``likelihood_options={"scale": b}``.)
    sigma: float = DEFAULT_SIGMA
    sigma_per_pixel: bool = False  # gaussian-learned: one sigma per pixel instead of one shared
    prior: str = "standard"
    prior_scale: float = 1.0  # the lambda of the scaled prior N(0, lambda^2 I)
    num_components: int = 10  # mixture components, or VampPrior pseudo-inputs
    x_dim: int = NUM_PIXELS
    activation: str = "relu"  # of the hidden layers: relu (the tutorial's) or tanh (the IWAE paper's)
    guide: str = "gaussian"  # the family of Q(z|x): gaussian (diagonal), full-cov or iaf (pyro_vae.guides)
    flow_layers: int = 2  # iaf: the number of autoregressive transforms
    #: An extension's own settings, passed to its factory as keywords (see pyro_vae.plugins).
    likelihood_options: dict[str, Any] = field(default_factory=dict)
    prior_options: dict[str, Any] = field(default_factory=dict)
    guide_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", _check_sizes("hidden sizes", self.hidden_sizes))
        if self.z_dim < 1:
            raise ConfigError(f"z_dim must be >= 1, got {self.z_dim}")
        if self.flow_layers < 1:
            raise ConfigError(f"flow_layers must be >= 1, got {self.flow_layers}")
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        _check_choice("prior", self.prior, PRIORS)
        _check_choice("guide", self.guide, GUIDES)
        for kind in ("likelihood", "prior", "guide"):
            object.__setattr__(
                self, f"{kind}_options", _check_options(kind, getattr(self, f"{kind}_options"))
            )
        if self.prior == "vamp" and self.guide == "iaf":
            # The VampPrior scores z under the guide at its pseudo-inputs: a flow would have to be
            # inverted there, one sequential pass per latent dimension, for every z.
            raise ConfigError("the vamp prior needs a gaussian or full-cov guide, not iaf")
        _check_sigma(self)
        if not self.prior_scale > 0:
            raise ConfigError(f"prior scale must be positive, got {self.prior_scale}")
        if self.num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {self.num_components}")
        _check_choice("activation", self.activation, ACTIVATIONS)


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
    likelihood_options: dict[str, Any] = field(default_factory=dict)  # see pyro_vae.plugins

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", _check_sizes("hidden sizes", self.hidden_sizes))
        object.__setattr__(self, "condition_sizes", _check_sizes("condition sizes", self.condition_sizes))
        object.__setattr__(self, "likelihood_options", _check_options("likelihood", self.likelihood_options))
        if self.z_dim < 1 or self.condition_dim < 1:
            raise ConfigError(f"z_dim and condition_dim must be >= 1, got {self.z_dim}, {self.condition_dim}")
        if (problem := column_problem(self.column)) is not None:
            raise ConfigError(problem)
        _check_choice("prior", self.prior, CONDITIONAL_PRIORS)
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        _check_sigma(self)

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
    "laplace": lambda config, dim, scale=DEFAULT_LAPLACE_SCALE: LaplaceLikelihood(scale),
}

#: VAE prior name -> factory taking the config and the encoder (the VampPrior shares it).
PRIORS: dict[str, Callable[[VAEConfig, nn.Module], nn.Module]] = {
    "standard": lambda config, encoder: StandardNormalPrior(config.z_dim),
    "scaled": lambda config, encoder: ScaledNormalPrior(config.z_dim, config.prior_scale),
    "mixture": lambda config, encoder: MixtureOfGaussiansPrior(config.z_dim, config.num_components),
    "vamp": lambda config, encoder: VampPrior(encoder, config.num_components, config.x_dim),
}

#: VAE guide name -> factory taking the config: the family of Q(z|x) (see :mod:`pyro_vae.guides`).
#: Each returns a network with ``local_parameters(x)``, ``distribution(params)`` and ``forward(x)``.
GUIDES: dict[str, Callable[[VAEConfig], nn.Module]] = {
    "gaussian": lambda config: GaussianEncoder(
        config.x_dim, config.hidden_sizes, config.z_dim, activation=config.activation
    ),
    "full-cov": lambda config: FullCovarianceEncoder(
        config.x_dim, config.hidden_sizes, config.z_dim, activation=config.activation
    ),
    "iaf": lambda config: IAFEncoder(
        config.x_dim,
        config.hidden_sizes,
        config.z_dim,
        activation=config.activation,
        flow_layers=config.flow_layers,
    ),  # fmt: skip
}

#: CVAE prior name -> factory: the tutorial's N(0, I), or Sohn et al.'s learned P(z|X).
CONDITIONAL_PRIORS: dict[str, Callable[[CVAEConfig], nn.Module]] = {
    "standard": lambda config: StandardNormalPrior(config.z_dim),
    "conditional": lambda config: LearnedConditionalPrior(config.condition_dim, config.z_dim),
}

#: objective name -> factory taking ``num_particles``. ``meanfield`` (the default) is the tutorial's
#: Eq. 10: one reparameterized sample for E_Q[log P(X|z)] and the KL of Eq. 7 in closed form where
#: the guide/prior pair has one (Pyro's ``TraceMeanField_ELBO``; it samples the KL where none
#: exists, e.g. for a mixture or VampPrior prior). ``trace`` samples the KL too (``Trace_ELBO``).
#: ``iwae`` is the importance-weighted bound of Burda et al. (2016) with K = ``num_particles``,
#: ``iwae-dreg`` the same bound with the doubly-reparameterized encoder gradient (Tucker et al.,
#: 2019). The ``jit-`` variants compile the loss once with ``torch.jit.trace`` (fixed batch size).
#: With ``num_particles`` K > 1 the iwae objectives tighten the bound; the others average K ELBOs.
OBJECTIVES: dict[str, Callable[[int], pyro.infer.ELBO]] = {
    "meanfield": lambda k: pyro.infer.TraceMeanField_ELBO(**_particles(k)),
    "trace": lambda k: pyro.infer.Trace_ELBO(**_particles(k)),
    "iwae": lambda k: IWAE_ELBO(num_particles=k),
    "iwae-dreg": lambda k: IWAE_DReG_ELBO(num_particles=k),
    # Tracing emits TracerWarnings for Pyro's shape checks, which are expected here.
    "jit-meanfield": lambda k: JitTraceMeanField_ELBO(ignore_jit_warnings=True, **_particles(k)),
    "jit-trace": lambda k: pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True, **_particles(k)),
    "jit-iwae": lambda k: JitIWAE_ELBO(num_particles=k),
}


def _particles(num_particles: int) -> dict[str, Any]:
    """K > 1 one-sample ELBOs averaged, vectorized over an outer particle plate."""
    return {"num_particles": num_particles, "vectorize_particles": True} if num_particles > 1 else {}


def build_objective(name: str, num_particles: int = 1) -> pyro.infer.ELBO:
    """The ELBO object for an objective name (see :data:`OBJECTIVES`) with K = ``num_particles``."""
    _check_choice("objective", name, OBJECTIVES)
    if num_particles < 1:
        raise ConfigError(f"num_particles must be >= 1, got {num_particles}")
    return OBJECTIVES[name](num_particles)


def build_vae(config: VAEConfig, *, name: str = "vae") -> VAE:
    """Build the encoder, decoder and prior described by ``config`` (freshly initialized)."""
    likelihood = _likelihood(config, config.x_dim)
    encoder = build_extension("guide", config.guide, GUIDES[config.guide], (config,), config.guide_options)
    decoder = Decoder(
        config.z_dim, tuple(reversed(config.hidden_sizes)), config.x_dim, likelihood,
        activation=config.activation,
    )  # fmt: skip
    prior = build_extension(
        "prior", config.prior, PRIORS[config.prior], (config, encoder), config.prior_options
    )
    return VAE(encoder, decoder, prior, name=name)


def _likelihood(config: VAEConfig | CVAEConfig, dim: int) -> Likelihood:
    factory = LIKELIHOODS[config.likelihood]
    return build_extension("likelihood", config.likelihood, factory, (config, dim), config.likelihood_options)


def build_cvae(config: CVAEConfig, *, name: str = "cvae") -> CVAE:
    """The tutorial's CVAE for completing a digit from one column (section 5)."""
    likelihood = _likelihood(config, config.y_dim)
    condition_net = ConditionNet(config.x_dim, config.condition_sizes, config.condition_dim)
    encoder = ConditionalEncoder(config.x_dim, config.y_dim, config.hidden_sizes, config.z_dim)
    decoder = ConditionalDecoder(
        config.z_dim, config.condition_dim, tuple(reversed(config.hidden_sizes)), config.y_dim, likelihood
    )
    return CVAE(encoder, decoder, CONDITIONAL_PRIORS[config.prior](config), condition_net, name=name)


def build_regressor(config: CVAEConfig, *, name: str = "regressor") -> Regressor:
    """The regressor baseline: the CVAE's conditioning network and decoder layers, without z."""
    likelihood = _likelihood(config, config.y_dim)
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
    """Optimization settings of a run; stored beside the model configuration.

    The defaults are the tutorial's recipe with the Eq. 10 objective; ``PRESETS`` holds the IWAE
    paper's (Burda et al., 2016). ``adam_eps`` 1e-8 is torch's default, the paper uses 1e-4.
    """

    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    objective: str = "meanfield"
    subset: int | None = None
    eval_seed: int = 1234
    num_particles: int = 1  # K of the iwae objectives (or K averaged one-sample ELBOs)
    lr_schedule: str = "none"  # see pyro_vae.schedules
    lr_milestones: tuple[int, ...] = ()  # the step schedule: epochs at which lr is multiplied by lr_decay
    lr_decay: float = 0.1
    kl_warmup: float = 0.0  # epochs over which the KL weight rises linearly from 0 to 1
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    adam_eps: float = 1e-8
    patience: int | None = None  # early stopping: epochs without a better validation ELBO
    init_output_bias: bool = False  # decoder output bias = logit of the training mean (Bernoulli)
    clip_grad_norm: float | None = None  # clip the total gradient norm to this value
    data_split: str = "standard"  # train/valid division of MNIST's training images (data.DATA_SPLITS)

    def __post_init__(self):
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))
        checks = [
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"the learning rate must be positive, got {self.lr}"),
            (self.num_particles >= 1, f"num_particles must be >= 1, got {self.num_particles}"),
            (self.kl_warmup >= 0, f"kl_warmup must be >= 0 epochs, got {self.kl_warmup}"),
            (self.adam_eps > 0, f"adam_eps must be positive, got {self.adam_eps}"),
            (
                len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
                f"adam_betas must be two numbers in [0, 1), got {list(self.adam_betas)}",
            ),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
            (
                self.clip_grad_norm is None or self.clip_grad_norm > 0,
                f"clip_grad_norm must be positive, got {self.clip_grad_norm}",
            ),
            (
                all(m >= 1 for m in self.lr_milestones)
                and list(self.lr_milestones) == sorted(self.lr_milestones),
                f"lr_milestones must be increasing epochs >= 1, got {list(self.lr_milestones)}",
            ),
            (
                self.lr_schedule == "step" or not self.lr_milestones,
                "lr_milestones belong to the step schedule; add --lr-schedule step",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("learning-rate schedule", self.lr_schedule, dict.fromkeys(LR_SCHEDULES))
        _check_choice("data split", self.data_split, DATA_SPLITS)


#: Named recipes: model and training settings that a flag such as ``--preset iwae-1layer`` sets
#: (explicit flags override them). ``iwae-1layer`` is the one-stochastic-layer model of Burda et
#: al. (2016), section 5 and Table 1: 784-200-200-50 with tanh, Bernoulli pixels, Adam with
#: eps 1e-4, batch 20, and the 3,280-epoch schedule of stages i = 0..7 (3^i passes at
#: 1e-3 * 10^(-i/7)), trained on 59,600 images with the last 400 for validation. The decoder's
#: output bias starts at the logit of the training mean.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "iwae-1layer": {
        "model": {"hidden_sizes": (200, 200), "z_dim": 50, "activation": "tanh", "likelihood": "bernoulli"},
        "train": {
            "epochs": IWAE_SCHEDULE_EPOCHS,
            "batch_size": 20,
            "lr": 1e-3,
            "lr_schedule": "iwae",
            "adam_betas": (0.9, 0.999),
            "adam_eps": 1e-4,
            "init_output_bias": True,
            "data_split": "iwae",
        },  # fmt: skip
    },
}


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild and continue a run: model kind and settings, training settings."""

    kind: str = "vae"
    model: Any = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: Modules imported before the model is rebuilt: they register its extensions (pyro_vae.plugins).
    plugins: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "plugins", tuple(self.plugins))
        _check_choice("model kind", self.kind, MODEL_KINDS)
        expected = MODEL_KINDS[self.kind][0]
        if not isinstance(self.model, expected):
            raise ConfigError(
                f"a {self.kind!r} run needs a {expected.__name__}, got {type(self.model).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        values = {"kind": self.kind, "model": self.model.to_dict(), "train": self.train.to_dict()}
        return {**values, "plugins": list(self.plugins)} if self.plugins else values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        try:
            plugins = tuple(values.get("plugins", ()))
            import_plugins(plugins)  # before the model's names are checked against the registries
            kind = values["kind"]
            _check_choice("model kind", kind, MODEL_KINDS)
            model = MODEL_KINDS[kind][0].from_dict(values["model"])
            return cls(kind=kind, model=model, train=TrainConfig.from_dict(values["train"]), plugins=plugins)
        except (KeyError, TypeError) as error:
            raise ConfigError(f"run configuration is incomplete or malformed ({error})") from None


def build_likelihood(config: RunConfig) -> Likelihood:
    """The likelihood of a run alone (what its data must be: binary or intensities), without its networks."""
    dim = config.model.x_dim if config.kind == "vae" else config.model.y_dim
    return _likelihood(config.model, dim)


def build_model(config: RunConfig) -> nn.Module:
    """The (freshly initialized) model of a run configuration."""
    return MODEL_KINDS[config.kind][1](config.model)
