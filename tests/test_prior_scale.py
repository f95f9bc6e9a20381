"""Section 2.4.3's prior scale: the exact rescaling of a VAE, its Pyro log-weights, and the study."""

from __future__ import annotations

import json

import pytest
import torch

from analysis import prior_scale
from analysis.common import run_study
from pyro_vae import VAEConfig, build_vae

SMOKE_FLAGS = [
    "--lambdas", "0.1", "10", "--control-seeds", "1",
    "--exact-factors", "0.1", "1000", "--exact-images", "40", "--exact-particles", "6",
    "--epochs", "1", "--subset", "500", "--hidden", "32", "--z-dim", "4",
    "--eval-subset", "40", "-k", "8", "--device", "cpu", "--no-progress",
]  # fmt: skip


def small_vae(**options):
    return build_vae(VAEConfig(z_dim=3, hidden_sizes=(16,), **options)).eval()


def test_log_weights_at_given_latents_are_the_three_densities():
    vae = small_vae()
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    z = torch.randn(4, 5, 3)
    expected = vae.decoder(z).log_prob(x) + vae.prior().log_prob(z) - vae.encoder(x).log_prob(z)
    assert torch.allclose(prior_scale.log_weights_at(vae, x, z), expected, atol=1e-4)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_exact_rescaling_leaves_every_log_weight_unchanged(likelihood):
    vae = small_vae(likelihood=likelihood)
    x = torch.rand(30, 784)
    x = torch.bernoulli(x) if likelihood == "bernoulli" else x
    for factor in (0.01, 3.0, 1000.0):
        checks = {
            dtype: prior_scale.exact_invariance(vae, x, factor, num_particles=5, dtype=dtype, batch_size=7)
            for dtype in (torch.float32, torch.float64)
        }
        assert checks[torch.float32]["max_abs_log_weight_difference"] < 1e-3
        assert checks[torch.float32]["max_relative_elbo_difference"] < 10 * torch.finfo(torch.float32).eps
        assert checks[torch.float64]["max_abs_elbo_difference"] < 1e-10
        assert checks[torch.float64]["max_abs_sample_difference"] < 1e-12
        # Rescaling only some of the three parts changes the ELBO: the check can fail.
        assert checks[torch.float64]["control_no_decoder_rescaling_mean_abs_elbo_change"] > 1e-3
        assert checks[torch.float64]["control_prior_only_mean_abs_elbo_change"] > 1e-3


def test_rescaling_composes_with_a_scaled_prior():
    vae = small_vae(prior="scaled", prior_scale=2.0)
    rescaled = prior_scale.rescale_vae(vae, 5.0)
    assert float(rescaled.prior.scale[0]) == pytest.approx(10.0)
    assert prior_scale.prior_scale_of(rescaled) == pytest.approx(10.0)


def test_prior_scale_study(tmp_path):
    out = tmp_path / "prior_scale"
    results = prior_scale.main([*SMOKE_FLAGS, "--out", str(out)])
    assert (
        json.loads((out / "prior_scale.json").read_text())["exact"]["summary"] == results["exact"]["summary"]
    )
    for name in ("exact_transform.png", "trained_lambdas.png", "elbo_curves.png", "samples_by_lambda.png"):
        assert (out / name).stat().st_size > 5_000, name
    # Part 1: the transformation is exact to rounding, in both precisions, for every factor. In
    # float32 that means a few units in the last place: below 8 machine epsilons relative (about
    # 1e-4 absolute for this barely trained model's ELBOs of -540 nats, 3e-5 for a trained one's).
    summary = results["exact"]["summary"]
    assert summary["float32"]["max_abs_elbo_difference"] < 1e-3
    assert summary["float32"]["max_relative_elbo_difference"] < 8 * torch.finfo(torch.float32).eps
    assert summary["float64"]["max_abs_elbo_difference"] < 1e-10
    assert len(results["exact"]["checks"]) == 4  # 2 factors x 2 dtypes
    for check in results["exact"]["checks"]:
        assert check["control_prior_only_mean_abs_elbo_change"] > 1.0
        assert check["control_no_decoder_rescaling_mean_abs_elbo_change"] > 1.0
    # Part 2: lambda = 1 is added as the reference; the extra seed measures training noise.
    trained = results["trained"]
    labels = [r["label"] for r in trained["runs"]]
    assert labels == ["lambda_0.1_seed_0", "lambda_1_seed_0", "lambda_10_seed_0", "lambda_1_seed_1"]
    assert trained["reference"] == "lambda_1_seed_0"
    reference = trained["runs"][1]
    assert reference["log_likelihood_minus_reference"]["mean"] == 0.0
    for row in trained["runs"]:
        assert row["log_likelihood"]["mean"] >= row["elbo"]["mean"]  # log-mean-exp >= mean, per image
        assert 0 <= row["active_units"] <= 4
        assert len(row["valid_elbo_by_epoch"]) == 1
    assert len(trained["seed_to_seed_log_likelihood_difference"]) == 1


@pytest.mark.parametrize("flag", ["--lambdas", "--exact-factors"])
def test_prior_scale_refuses_non_positive_lambda(tmp_path, capsys, flag):
    assert run_study(prior_scale.main, ["--out", str(tmp_path), flag, "1", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} needs positive numbers" in err
