"""The variational autoencoder as a Pyro model/guide pair (Kingma & Welling, 2014; tutorial §2).

Generative model (Fig. 1 of the tutorial):   z ~ P(z),   x ~ P(x | z) = decoder(z).
Guide (the encoder of Fig. 4):               z ~ Q(z | x) = encoder(x).

``Trace_ELBO`` on this pair maximizes Eq. 5, E_Q[log P(X|z)] - KL(Q(z|X) || P(z)), with one
reparameterized sample per datapoint (Eq. 10).
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from .guides import guide_location
from .likelihoods import DecoderLikelihood


class VAE(DecoderLikelihood, nn.Module):
    """A VAE assembled from an encoder, a decoder and a prior (each returns a distribution).

    Parameters
    ----------
    encoder : nn.Module
        ``x -> Distribution over z`` with event shape ``(z_dim,)``.
    decoder : nn.Module
        ``z -> Distribution over x`` whose event covers one datapoint.
    prior : nn.Module
        ``() -> Distribution over z`` with event shape ``(z_dim,)``.
    name : str
        Prefix of the names under which the networks enter Pyro's parameter store. Two models
        trained in one process must not share it, or one model's optimizer step would update
        the other's weights (:func:`pyro_vae.train.train` clears the store to prevent this).

    Notes
    -----
    ``model`` and ``guide`` mirror each other: same signature, one ``pyro.plate("data")``, the
    site ``"z"`` in both and the observed site ``"x"`` in the model. Extra leading plates (the
    estimators' particle plate) broadcast through both.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module, *, name: str = "vae"):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.name = name

    def model(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(x))

    # Helpers for figures; they run the networks directly and leave Pyro's state alone.
    @torch.no_grad()
    def sample_images(self, num_images: int, z: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder means f(z) for z ~ P(z) (or the given ``z``): the tutorial's Fig. 7, ``(N, x_dim)``."""
        if z is None:
            z = self.prior().sample((num_images,))
        return self.decoder(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the centre of Q(z|x), f(mu(x)), ``(N, x_dim)``.

        The centre is the mean of a Gaussian guide and, for a flow, the image of its base mean
        (:func:`~pyro_vae.guides.guide_location`).
        """
        return self.decoder(guide_location(self.encoder(x))).mean
