"""The two terms of Eq. 10 as a user writes them in plain PyTorch: the peers' one loss.

The benchmarks compare pyro-vae with the straightforward eager loop on the same networks
(``build_vae``'s ``encoder.body`` and ``decoder.body``); this is that loop's loss, so that every
peer computes it alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyro_vae.nets import MIN_SCALE


def meanfield_terms(encoder, decoder, x: torch.Tensor, z_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Reconstruction and KL terms of Eq. 10 for a binary batch ``x``, each summed over the batch.

    The encoder's output splits into the mean and a raw scale of Q(z|X) = N(mu, sigma^2),
    sigma = softplus(raw) + MIN_SCALE (as pyro-vae's guide). One reparameterized z = mu + sigma eps
    gives the reconstruction term -log P(X|z) (Bernoulli, ``binary_cross_entropy_with_logits``);
    the KL is the closed form (Doersch, 2016, Eq. 7 with Sigma_1 = I, mu_1 = 0):
    KL = 1/2 sum (sigma^2 + mu^2 - 1 - log sigma^2). The negative ELBO is their sum.
    """
    z_loc, raw_scale = encoder(x).split(z_dim, dim=-1)
    z_scale = F.softplus(raw_scale) + MIN_SCALE
    z = z_loc + z_scale * torch.randn_like(z_loc)
    reconstruction = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    kl = 0.5 * (z_scale.pow(2) + z_loc.pow(2) - 1 - 2 * z_scale.log()).sum()
    return reconstruction, kl
