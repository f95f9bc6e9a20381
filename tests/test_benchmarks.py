"""The plain-PyTorch peers of the benchmarks: their loss is Eq. 10; the tutorial-net peer runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from benchmarks import plain_vae, tutorial_net_peer
from pyro_vae.errors import ConfigError
from pyro_vae.nets import MIN_SCALE

ROOT = Path(__file__).resolve().parents[1]


def test_meanfield_terms_are_the_bernoulli_nll_and_the_closed_form_kl():
    torch.manual_seed(0)
    z_dim, x = 3, torch.bernoulli(torch.full((5, 8), 0.3))
    encoder, decoder = torch.nn.Linear(8, 2 * z_dim), torch.nn.Linear(z_dim, 8)
    torch.manual_seed(1)
    reconstruction, kl = plain_vae.meanfield_terms(encoder, decoder, x, z_dim)
    # the same draw of eps, written with torch.distributions
    loc, raw = encoder(x).split(z_dim, dim=-1)
    scale = torch.nn.functional.softplus(raw) + MIN_SCALE
    torch.manual_seed(1)
    z = loc + scale * torch.randn_like(loc)
    expected_reconstruction = -Bernoulli(logits=decoder(z)).log_prob(x).sum()
    expected_kl = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).sum()
    assert torch.allclose(reconstruction, expected_reconstruction, rtol=1e-5)
    assert torch.allclose(kl, expected_kl, rtol=1e-5)


def test_the_tutorial_net_peer_trains_scores_both_models_and_writes_its_json(tmp_path):
    results = tutorial_net_peer.main(
        ["--out", str(tmp_path), "--pretrained", str(ROOT / "pretrained" / "tutorial-net"), "--epochs", "2",
         "--kl-warmup", "1", "--train-images", "300", "--test-images", "8", "-k", "10", "--no-progress"]
    )  # fmt: skip
    stored = json.loads((tmp_path / "tutorial_net_peer.json").read_text())
    assert stored["peer"]["best_epoch"] in (1, 2) and len(stored["peer"]["valid_elbo"]) == 2
    for side in ("peer", "pyro_vae"):
        assert stored[side]["test"]["num_images"] == 8 and stored[side]["test"]["num_samples"] == 10
        # log-mean-exp of the same K log-weights >= their mean (Jensen), image by image
        assert stored[side]["test"]["log_likelihood"] >= stored[side]["test"]["elbo"]
    # the shipped model (150 epochs) is far ahead of a 2-epoch peer on 300 images: the sides are not swapped
    difference = results["peer"]["test"]["log_likelihood"] - results["pyro_vae"]["test"]["log_likelihood"]
    assert stored["log_likelihood_difference"]["mean"] == pytest.approx(difference)
    assert difference < -20


def test_the_tutorial_net_peer_refuses_another_network_before_training(tmp_path):
    with pytest.raises(ConfigError, match="not the tutorial network"):
        tutorial_net_peer.main(["--out", str(tmp_path), "--pretrained", str(ROOT / "pretrained" / "vae-k1")])
    with pytest.raises(ConfigError, match=r"--epochs needs positive numbers, got \[0\]"):
        tutorial_net_peer.main(["--out", str(tmp_path), "--epochs", "0"])
