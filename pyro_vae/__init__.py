"""pyro-vae: the models of Doersch's *Tutorial on Variational Autoencoders* (2016) in Pyro.

The library is organised by job (see DESIGN.md): ``data`` (MNIST), ``nets`` / ``likelihoods`` /
``priors`` (networks that return distributions), ``vae`` (the model/guide pair), ``estimators``
(ELBO and importance-sampled log p(x)), ``train`` (SVI with checkpoints), ``runs`` (run folders)
and ``cli`` (the ``pyro-vae`` command).
"""

from .builders import RunConfig, TrainConfig, VAEConfig, build_vae
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood
from .nets import MLP, Decoder, GaussianEncoder
from .priors import StandardNormalPrior
from .train import TrainHistory, train
from .vae import VAE

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "VAE",
    "BernoulliLikelihood",
    "Decoder",
    "GaussianEncoder",
    "GaussianLikelihood",
    "Likelihood",
    "RunConfig",
    "StandardNormalPrior",
    "TrainConfig",
    "TrainHistory",
    "VAEConfig",
    "build_vae",
    "train",
]
