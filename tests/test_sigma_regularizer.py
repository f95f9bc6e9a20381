"""Section 2.4.3's sigma knob: reconstruction terms against their closed-form link, and the study."""

from __future__ import annotations

import json
import math

import pytest
import torch

from analysis import sigma_regularizer
from analysis.common import run_study
from pyro_vae import VAEConfig, build_vae

SMOKE_FLAGS = [
    "--sigmas", "0.05", "1.0",
    "--epochs", "4", "--subset", "2000", "--lr", "3e-3",
    "--hidden", "64", "--z-dim", "8",
    "--eval-subset", "200", "--num-samples", "4",
    "--device", "cpu", "--no-progress",
]  # fmt: skip


def test_gaussian_distortion_is_squared_error_over_two_sigma_squared_plus_a_constant():
    """-log N(x | f(z), sigma^2 I) = ||x - f(z)||^2 / (2 sigma^2) + D log(sqrt(2 pi) sigma), per draw."""
    sigma = 0.3
    vae = build_vae(VAEConfig(z_dim=3, hidden_sizes=(16,), likelihood="gaussian", sigma=sigma)).eval()
    x = torch.rand(25, 784, generator=torch.Generator().manual_seed(0))
    terms = sigma_regularizer.reconstruction_terms(vae, x, x, num_samples=7, batch_size=10)
    constant = 784 * math.log(math.sqrt(2 * math.pi) * sigma)
    expected = terms["squared_error"] / (2 * sigma**2) + constant
    assert torch.allclose(terms["distortion"], expected, rtol=1e-5)
    assert terms["squared_error"].shape == (25,) and bool((terms["squared_error_at_mean"] > 0).all())


def test_sigma_study_shows_the_trade_off_and_the_bernoulli_reference(tmp_path, capsys):
    out = tmp_path / "sigma"
    results = sigma_regularizer.main([*SMOKE_FLAGS, "--out", str(out)])
    on_disk = json.loads((out / "sigma_regularizer.json").read_text())
    assert on_disk["trade_off_confirmed"] == results["trade_off_confirmed"]
    for name in ("rate_distortion.png", "samples_by_sigma.png", "reconstructions_by_sigma.png"):
        assert (out / name).stat().st_size > 5_000, name
    labels = [m["label"] for m in results["models"]]
    assert labels == ["gaussian_sigma_0.05", "gaussian_sigma_1", "bernoulli"]
    for label in labels:
        assert (out / "runs" / label / "checkpoint.pt").exists()
    small, large, bernoulli = results["models"]
    assert results["budget"]["eval_images"] == 200 and results["budget"]["epochs"] == 4
    assert small["regularization_weight"] == pytest.approx(2 * 0.05**2)
    assert bernoulli["sigma"] is None and bernoulli["regularization_weight"] is None
    assert "same unit" in results["bernoulli_note"]
    for model in results["models"]:
        assert model["elbo"]["mean"] == pytest.approx(-(model["distortion"]["mean"] + model["rate"]["mean"]))
        assert 0 <= model["active_units"] <= 8 and model["rate"]["mean"] > 0
    # sigma = 0.05 weighs squared error 400x more than sigma = 1: far more nats go into z, and the
    # reconstructions are better, beyond 3 paired standard errors on the same images.
    (step,) = results["trade_off_steps"]
    assert step["rate_falls"] and step["squared_error_rises"] and results["trade_off_confirmed"]
    assert small["rate"]["mean"] > 5 * large["rate"]["mean"]
    assert "epoch 4/4" in capsys.readouterr().out
    # A second invocation on the same folder reuses the finished runs (no epoch is trained) and
    # reproduces the numbers.
    again = sigma_regularizer.main([*SMOKE_FLAGS, "--out", str(out), "--no-bernoulli"])
    assert again["models"][0]["rate"] == small["rate"]
    assert "epoch" not in capsys.readouterr().out
    # ... and refuses to mix a run of another configuration into the study.
    assert run_study(sigma_regularizer.main, [*SMOKE_FLAGS, "--out", str(out), "--z-dim", "4"]) == 2
    assert "this study holds another run there" in capsys.readouterr().err


@pytest.mark.parametrize("sigma", ["0", "-0.1", "nan"])
def test_sigma_study_refuses_non_positive_sigma(tmp_path, capsys, sigma):
    assert run_study(sigma_regularizer.main, ["--out", str(tmp_path), "--sigmas", "0.1", sigma]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sigmas needs positive numbers" in err
    assert not (tmp_path / "runs").exists()
