"""pyro-vae: the models of Doersch's *Tutorial on Variational Autoencoders* (2016) in Pyro.

The library is organised by job (the README's "Layout"): ``data`` (MNIST), ``nets`` /
``likelihoods`` / ``priors`` (networks that return distributions), ``vae`` (the model/guide pair),
``estimators`` (ELBO and importance-sampled log p(x)), ``objectives`` (Eq. 10, IWAE, DReG),
``train`` (SVI with checkpoints), ``runs`` (run folders: ``train_run``, ``load_run`` and
``evaluate_run``, exported here), ``guides`` (the families of Q(z|x)), ``plugins`` (extensions by
name: ``register_likelihood``, ``register_prior``, ``register_guide``, exported here) and ``cli``
(the ``pyro-vae`` command).
"""

from .builders import RunConfig, TrainConfig, VAEConfig, build_vae
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood
from .nets import MLP, Decoder, GaussianEncoder
from .plugins import register_guide, register_likelihood, register_prior
from .priors import StandardNormalPrior
from .runs import evaluate_run, load_run, train_run
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
    "evaluate_run",
    "load_run",
    "register_guide",
    "register_likelihood",
    "register_prior",
    "train",
    "train_run",
]
