"""The evaluation command and the likelihood studies on a small trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis import likelihood_gap, posterior
from pyro_vae.cli import main as cli_main


def test_evaluate_command_writes_the_documented_keys(tiny_vae_run, capsys):
    assert (
        cli_main(
            ["evaluate", str(tiny_vae_run), "-k", "64", "--subset", "50", "--device", "cpu", "--no-progress"]
        )
        == 0
    )
    report = json.loads((tiny_vae_run / "eval.json").read_text())
    expected = (
        "elbo log_likelihood log_likelihood_se gap num_samples num_images ess_fraction khat_over_0_7 "
    ).split()
    assert set(expected) <= set(report), set(expected) - set(report)
    assert report["num_samples"] == 64 and report["num_images"] == 50
    assert report["log_likelihood"] >= report["elbo"]  # logsumexp >= mean, per image
    assert 0 < report["ess_fraction"] <= 1
    assert report["rate"] + report["distortion"] == pytest.approx(-report["elbo"], rel=1e-6)
    assert "log p >=" in capsys.readouterr().out
    # the same seed gives the same numbers
    assert (
        cli_main(
            [
                "evaluate",
                str(tiny_vae_run),
                "-k",
                "64",
                "--subset",
                "50",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tiny_vae_run / "again.json"),
            ]
        )
        == 0
    )
    again = json.loads((tiny_vae_run / "again.json").read_text())
    assert again["log_likelihood"] == report["log_likelihood"]


def test_evaluate_refuses_bad_input(tmp_path, capsys):
    assert cli_main(["evaluate", str(tmp_path), "-k", "10"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["evaluate", str(tmp_path), "-k", "0"])
    assert exit_.value.code == 2


def test_likelihood_gap_study(tiny_vae_run, tmp_path):
    out = tmp_path / "gap"
    summary = likelihood_gap.main(
        [
            str(tiny_vae_run),
            "--ks",
            "1",
            "4",
            "16",
            "64",
            "--subset",
            "60",
            "--naive-images",
            "5",
            "--naive-counts",
            "1",
            "10",
            "100",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    for name in (
        "likelihood_gap.json",
        "likelihood_vs_k.png",
        "gap_histogram.png",
        "gap_vs_khat.png",
        "rate_distortion.png",
        "naive_estimator.png",
    ):
        assert (out / name).stat().st_size > 0, name
    # the stored compute: the run's training (all its epochs) and this study's evaluation
    stored = json.loads((out / "likelihood_gap.json").read_text())["compute"]
    trained = sum(json.loads((tiny_vae_run / "metrics.json").read_text())["epoch_seconds"])
    assert stored["training_seconds"] == pytest.approx(trained) and stored["evaluation_seconds"] > 0
    gains = [row["gain_over_elbo"] for row in summary["by_k"]]
    errors = [row["gain_over_elbo_se"] for row in summary["by_k"]]
    assert gains[0] == pytest.approx(0.0, abs=1e-9)  # K = 1 blocks average to the ELBO
    for small, large, e_small, e_large in zip(gains, gains[1:], errors, errors[1:]):
        assert large >= small - 3 * np.hypot(e_small, e_large)  # E log p-hat_K non-decreasing in K
    # -ELBO = rate + distortion (section 2.4.2), the two measured separately from the log-weights
    assert summary["rate_nats"] + summary["distortion_nats"] == pytest.approx(-summary["elbo"], rel=1e-6)
    assert summary["gap"] == pytest.approx(gains[-1])  # log p-hat_K - ELBO at the largest K
    assert summary["rate_bits"] == pytest.approx(summary["rate_nats"] / np.log(2))
    # prior sampling is far behind sampling from Q at equal sample counts
    assert summary["naive"]["prior_sampling_mean"][-1] < summary["naive"]["q_sampling_mean"][0]
    stored = json.loads((out / "likelihood_gap.json").read_text())
    assert len(stored["per_image"]["gap"]) == 60


def test_posterior_study_writes_inference_data_and_diagnostics(tiny_vae_run, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    out = tmp_path / "post"
    results = posterior.main(
        [
            str(tiny_vae_run),
            "--images",
            "1",
            "--chains",
            "2",
            "--draws",
            "40",
            "--warmup",
            "40",
            "--num-samples",
            "300",
            "--pair-dims",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    idata = arviz.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior["z"].shape == (2, 40, 1, 4)
    assert len(results["rhat_max"]) == 1 and np.isfinite(results["rhat_max"][0])
    assert (out / "pairs_image0.png").exists() and (out / "moments.png").exists()
    image = results["images"][0]
    assert image["kl_is_gap"] >= 0
    assert image["log_likelihood_q"] >= image["elbo"]


@pytest.mark.parametrize("guide", ["gaussian", "full-cov", "iaf"])
def test_kl_to_the_gaussian_fit_of_the_draws_for_each_guide(guide):
    """The closed form (Gaussian families) or the internal Monte Carlo (flow) against an
    independent Monte Carlo estimate of E_q[log q(z) - log N(z; fit)], within 5 standard errors."""
    import pyro.distributions as dist

    from pyro_vae import VAEConfig, build_vae

    torch.manual_seed(0)
    vae = build_vae(VAEConfig(z_dim=3, hidden_sizes=(8,), guide=guide))
    with torch.no_grad():
        q = vae.encoder(torch.bernoulli(torch.rand(1, 784)))
        draws = 0.7 * torch.randn(2, 400, 3) + 0.2
        flat = draws.reshape(-1, 3).double()
        fit = dist.MultivariateNormal(flat.mean(0), covariance_matrix=torch.cov(flat.T) + 1e-6 * torch.eye(3))
        z = q.sample((20000,))[:, 0]
        terms = q.log_prob(z.unsqueeze(1))[:, 0].double() - fit.log_prob(z.double())
    kl = posterior.gaussian_kl_q_to_fit(q, draws, num_samples=20000)
    assert kl > 0
    assert abs(kl - float(terms.mean())) < 5 * float(terms.std()) / 20000**0.5 * (
        1.5 if guide == "iaf" else 1
    )


@pytest.mark.parametrize("flag", ["--draws", "--chains", "--num-samples", "--images"])
def test_posterior_refuses_counts_below_one(tiny_vae_run, tmp_path, capsys, flag):
    from analysis.common import run_study

    assert run_study(posterior.main, [str(tiny_vae_run), "--out", str(tmp_path), flag, "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {flag} must be >= 1, got 0"
