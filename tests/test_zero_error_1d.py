"""Appendix A in numbers: closed forms for a Gaussian ground truth, the construction, the slope, the CLI.

Reference values come from closed forms derived here (Gaussian ground truth, Gaussian mixture
convolved with noise) or from :func:`torch.distributions.kl_divergence`, never from the code
under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import log_ndtr

from analysis import zero_error_1d
from analysis.common import run_study
from analysis.zero_error_1d.construction import f_decoder, g_encoder, g_second, kl_expansion, log_g_prime
from analysis.zero_error_1d.ground_truths import Gaussian1D, GaussianMixture1D, Gumbel1D
from analysis.zero_error_1d.learned import learned_comparison
from analysis.zero_error_1d.quadrature import (
    fit_power_law,
    gaussian_closed_form,
    kl_constructive,
    kl_moment_matched,
    standardized_posterior,
    total_variation,
)
from analysis.zero_error_1d.settings import DEFAULT_SIGMAS
from analysis.zero_error_1d.study import default_xs, zero_error_table
from pyro_vae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = np.array(DEFAULT_SIGMAS)
TRUTHS = {
    "gaussian": Gaussian1D(0.5, 0.8),
    "mixture": GaussianMixture1D(),
    "gumbel": Gumbel1D(),
    "mixture3": GaussianMixture1D([0.2, 0.5, 0.3], [-3.0, 0.0, 2.5], [0.3, 1.0, 0.6]),
}


@pytest.fixture(scope="module")
def mixture_table():
    truth = TRUTHS["mixture"]
    xs = default_xs(truth)
    return xs, zero_error_table(truth, xs, SIGMAS)


# ------------------------------------------------------------------ the Gaussian closed form


@pytest.mark.parametrize("loc, scale", [(0.5, 0.8), (-1.0, 2.0)])
def test_quadrature_matches_the_gaussian_closed_form_at_every_sigma(loc, scale):
    truth = Gaussian1D(loc, scale)
    # the bulk and both tails (+-3.5 scale)
    xs = np.concatenate([default_xs(truth), loc + scale * np.array([-3.5, 3.5])])
    exact = gaussian_closed_form(loc, scale, xs, SIGMAS)
    table = zero_error_table(truth, xs, SIGMAS)
    kl_error = np.abs(table["kl"] - exact["kl"])
    # The issue asks for 1e-6; the trapezoid rule in z0 does far better.
    assert kl_error.max() < 1e-12, kl_error.max(axis=1)
    resolvable = exact["kl"] > 1e-9  # below, 1e-16 rounding is a large relative error
    assert np.all(kl_error[resolvable] / exact["kl"][resolvable] < 1e-6)
    np.testing.assert_allclose(table["log_p_sigma"], exact["log_p_sigma"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["elbo"], exact["log_p_sigma"] - exact["kl"], rtol=0, atol=1e-12)
    # A Gaussian posterior is matched exactly by its moments.
    assert np.abs(table["kl_moment_matched"]).max() < 1e-12


def test_gaussian_closed_form_agrees_with_torch_kl():
    """The reference itself, from torch's Gaussian KL and log density in float64.

    Q = N(g, (sigma/s)^2) with g = (X - m)/s, and the conjugate Normal-Normal posterior
    P(z|X) = N(s (X - m) / (s^2 + sigma^2), sigma^2 / (s^2 + sigma^2)).
    """
    loc, scale = 0.5, 0.8
    xs = np.array([-1.0, 0.5, 2.0])
    sigmas = np.array([0.3, 0.1])  # large enough that torch's direct formula does not cancel
    exact = gaussian_closed_form(loc, scale, xs, sigmas)
    for i, sigma in enumerate(sigmas):
        q = torch.distributions.Normal(torch.tensor((xs - loc) / scale), torch.tensor(sigma / scale))
        posterior_loc = scale * (xs - loc) / (scale**2 + sigma**2)
        posterior_scale = sigma / np.sqrt(scale**2 + sigma**2)
        p = torch.distributions.Normal(torch.tensor(posterior_loc), torch.tensor(posterior_scale))
        np.testing.assert_allclose(
            exact["kl"][i], torch.distributions.kl_divergence(q, p).numpy(), rtol=1e-10
        )
        marginal = torch.distributions.Normal(
            torch.tensor(loc, dtype=torch.float64), torch.tensor(np.sqrt(scale**2 + sigma**2))
        )
        np.testing.assert_allclose(
            exact["log_p_sigma"][i], marginal.log_prob(torch.tensor(xs)).numpy(), rtol=1e-12
        )


def test_total_variation_matches_the_gaussian_closed_form():
    truth = Gaussian1D(0.5, 0.8)
    tv = total_variation(truth, SIGMAS)["tv"]
    np.testing.assert_allclose(tv, gaussian_closed_form(0.5, 0.8, [0.0], SIGMAS)["tv"], rtol=1e-4)


# ------------------------------------------------------------------ the construction f, g, g', g''


@pytest.mark.parametrize("name", sorted(TRUTHS))
def test_f_and_g_are_inverses_and_f_pushes_the_prior_to_p_gt(name):
    truth = TRUTHS[name]
    xs = default_xs(truth, np.linspace(1e-6, 1 - 1e-6, 101))
    assert np.all(np.abs(f_decoder(truth, g_encoder(truth, xs)) - xs) <= 1e-12 * (1 + np.abs(xs)))
    z = np.linspace(-9, 9, 181)
    np.testing.assert_allclose(g_encoder(truth, f_decoder(truth, z)), z, rtol=0, atol=1e-9)
    # F(f(z)) = G(z), in log space on the lower side and for the survival on the upper side
    lower, upper = z <= 0, z > 0
    np.testing.assert_allclose(truth.log_cdf(f_decoder(truth, z[lower])), log_ndtr(z[lower]), rtol=1e-11)
    np.testing.assert_allclose(truth.log_sf(f_decoder(truth, z[upper])), log_ndtr(-z[upper]), rtol=1e-11)


def test_mixture_inverse_cdf_is_accurate_far_in_the_tails():
    truth = TRUTHS["mixture"]
    z = np.array([-35.0, -20.0, 20.0, 35.0])  # G(z) underflows to 0 or rounds to 1 here
    x = f_decoder(truth, z)
    assert np.all(np.isfinite(x)) and np.all(np.diff(x) > 0)
    np.testing.assert_allclose(truth.log_cdf(x[:2]), log_ndtr(z[:2]), rtol=1e-12)
    np.testing.assert_allclose(truth.log_sf(x[2:]), log_ndtr(-z[2:]), rtol=1e-12)
    np.testing.assert_allclose(
        truth.icdf(np.array([0.25, 0.5])), f_decoder(truth, np.array([-0.6744897501960817, 0.0]))
    )


@pytest.mark.parametrize("name", sorted(TRUTHS))
def test_g_prime_and_g_second_match_finite_differences(name):
    truth = TRUTHS[name]
    xs = default_xs(truth, np.linspace(0.01, 0.99, 41))
    h = 1e-5
    g_prime = np.exp(log_g_prime(truth, xs))
    fd_prime = (g_encoder(truth, xs + h) - g_encoder(truth, xs - h)) / (2 * h)
    np.testing.assert_allclose(g_prime, fd_prime, rtol=1e-8)
    fd_second = (np.exp(log_g_prime(truth, xs + h)) - np.exp(log_g_prime(truth, xs - h))) / (2 * h)
    np.testing.assert_allclose(g_second(truth, xs), fd_second, rtol=1e-6, atol=1e-8)


def test_ground_truth_densities_are_normalized_and_match_their_cdfs():
    for truth in TRUTHS.values():
        x = np.linspace(truth.icdf(1e-12), truth.icdf(1 - 1e-12), 200_001)
        p = np.exp(truth.log_pdf(x))
        assert abs(np.trapezoid(p, x) - 1) < 1e-9
        # d/dx F = p and d/dx log p = dlog_pdf at a few points
        probe = truth.icdf(np.array([0.1, 0.4, 0.8]))
        h = 1e-6
        np.testing.assert_allclose(
            (truth.cdf(probe + h) - truth.cdf(probe - h)) / (2 * h), np.exp(truth.log_pdf(probe)), rtol=1e-7
        )
        fd = (truth.log_pdf(probe + h) - truth.log_pdf(probe - h)) / (2 * h)
        np.testing.assert_allclose(truth.dlog_pdf(probe), fd, rtol=1e-6)


# ------------------------------------------------------------------ Appendix A's claims, measured


def test_mixture_kl_decreases_monotonically_as_sigma_decreases(mixture_table):
    _, table = mixture_table
    kl = table["kl"]  # rows: sigma = 0.3, 0.1, 0.03, 0.01, 0.003
    assert np.all(kl > 0)
    assert np.all(np.diff(kl, axis=0) < 0)


def test_log_p_sigma_converges_to_log_p_gt_like_sigma_squared(mixture_table):
    xs, table = mixture_table
    error = np.abs(table["log_p_sigma"] - table["log_p_gt"]).max(axis=1)
    assert np.all(np.diff(error) < 0)
    assert error[-1] < 1e-4
    # O(sigma^2): error / sigma^2 settles to a constant (within 2% between sigma = 0.01 and 0.003)
    scaled = error / SIGMAS**2
    assert abs(scaled[-1] / scaled[-2] - 1) < 0.02
    # P_sigma of a Gaussian mixture is the mixture with scales sqrt(s_k^2 + sigma^2)
    truth = TRUTHS["mixture"]
    for i, sigma in enumerate(SIGMAS):
        exact = GaussianMixture1D(truth.weights, truth.locs, np.sqrt(truth.scales**2 + sigma**2)).log_pdf(xs)
        np.testing.assert_allclose(table["log_p_sigma"][i], exact, rtol=0, atol=1e-11)


def test_quadrature_error_is_negligible(mixture_table):
    _, table = mixture_table
    assert table["kl_doubling_error"].max() < 1e-12
    assert table["log_p_doubling_error"].max() < 1e-12
    assert table["log_p_convolution_error"].max() < 1e-11


@pytest.mark.parametrize("name", ["mixture", "gumbel"])
def test_kl_slope_against_sigma_is_two(name, mixture_table):
    truth = TRUTHS[name]
    table = mixture_table[1] if name == "mixture" else zero_error_table(truth, default_xs(truth), SIGMAS)
    slope, stderr, _ = fit_power_law(SIGMAS, table["kl"].mean(axis=1))
    # KL = A sigma^2 (1 + O(sigma)): the O(sigma) corrections at sigma = 0.3 bend the log-log line
    # (mixture: slope 2.045, stderr 0.017; gumbel: 1.994, 0.003). The regression's stderr measures
    # exactly that bending, so the slope must lie within 4 stderr of 2; a wrong exponent (1 or 3)
    # would be > 50 stderr away.
    assert stderr < 0.05
    assert abs(slope - 2) < 4 * stderr
    # Over sigma <= 0.03 the corrections are below 1% of the slope.
    small = SIGMAS <= 0.03
    assert abs(fit_power_law(SIGMAS[small], table["kl"].mean(axis=1)[small])[0] - 2) < 0.01


@pytest.mark.parametrize("name", ["mixture", "gumbel", "mixture3"])
def test_kl_matches_the_second_order_expansion(name):
    """KL / sigma^2 -> (15 c^2 - 6 c d + d^2) / 2 and the moment-matched KL / sigma^2 -> 3 c^2."""
    truth = TRUTHS[name]
    xs = default_xs(truth)
    sigma = 1e-3
    post = standardized_posterior(truth, xs, np.array([sigma]))
    expansion = kl_expansion(truth, xs)
    measured = kl_constructive(post)[0] / sigma**2
    np.testing.assert_allclose(measured, expansion["kl_over_sigma2"], rtol=0.01)
    predicted_mm = expansion["moment_matched_over_sigma2"]
    measured_mm = kl_moment_matched(post)[0] / sigma**2
    assert np.all(np.abs(measured_mm - predicted_mm) <= 0.01 * predicted_mm + 1e-3 * predicted_mm.max())


# ------------------------------------------------------------------ the command line


def test_study_writes_the_json_and_the_figures(tmp_path):
    out = tmp_path / "study"
    results = zero_error_1d.main(
        [
            "--sigmas",
            "0.3",
            "0.03",
            "0.003",
            "--xs",
            "-2",
            "0",
            "1.5",
            "--num-points",
            "256",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "zero_error_1d.json").read_text())
    expected = (
        "sigmas xs kl log_p_sigma log_p_gt elbo slope slope_stderr total_variation max_abs_log_p_error "
        "quadrature curvature by_ground_truth closed_form_check seconds"
    ).split()
    assert set(expected) <= set(report), set(expected) - set(report)
    assert report["sigmas"] == [0.3, 0.03, 0.003] and report["xs"] == [-2.0, 0.0, 1.5]
    kl, log_p = np.array(report["kl"]), np.array(report["log_p_sigma"])
    assert kl.shape == (3, 3) and log_p.shape == (3, 3) and len(report["log_p_gt"]) == 3
    np.testing.assert_allclose(report["elbo"], log_p - kl, atol=1e-12)
    # three sigmas and three X only: the fit of the X-averaged KL, not yet the asymptotic 2
    slope, stderr, _ = fit_power_law(report["sigmas"], kl.mean(axis=1))
    assert report["slope"] == pytest.approx(slope) and report["slope_stderr"] == pytest.approx(stderr)
    assert 1.5 < report["slope"] < 2.5
    assert set(report["by_ground_truth"]) == {"mixture", "gumbel"}
    assert report["ground_truth"]["family"] == "mixture"
    assert report["closed_form_check"]["max_abs_kl_error"] < 1e-10
    assert report["quadrature"]["max_abs_kl_doubling_error"] < 1e-6  # 256 points here; 1024 by default
    assert "learned" not in report
    for name in ("kl_vs_sigma", "p_sigma_mixture", "posterior_mixture", "kl_vs_x_mixture", "kl_vs_x_gumbel"):
        assert (out / f"{name}.png").stat().st_size > 0
    assert results["slope"] == report["slope"]


def test_learned_vae_smoke(tmp_path):
    out = tmp_path / "learned"
    argv = (
        "--ground-truths mixture --sigmas 0.3 0.1 --xs 0 1 --num-points 128 --learned --learned-sigmas 0.3 "
        "--learned-train-size 300 --learned-test-size 40 --learned-epochs 3 --learned-fine-tune-epochs 1 "
        "--learned-hidden 16 --learned-particles 400 --no-progress"
    ).split() + ["--out", str(out)]
    zero_error_1d.main(argv)
    report = json.loads((out / "zero_error_1d.json").read_text())
    learned = report["learned"]
    (row,) = learned["rows"]
    assert learned["sigmas"] == [0.3] and row["num_test"] == 40
    assert len(row["train_elbo"]) == 4  # 3 epochs + 1 fine-tuning epoch
    # log P(X) >= ELBO(X) for every X: quadrature errors are far below the tolerance
    assert min(row["gap_per_x"]) > -1e-6
    assert row["constructive_gap_mean"] > 0
    assert row["quadrature_log_p_doubling_error"] < 1e-4 and row["quadrature_elbo_doubling_error"] < 1e-4
    # quadrature against the package's Monte Carlo estimators (tolerances from their MC errors)
    assert abs(row["estimators_mc_elbo_mean"] - row["elbo_mean"]) < 5 * row["estimators_mc_elbo_mc_se"] + 1e-4
    # importance sampling lies between the Monte Carlo ELBO (always) and, up to its Monte Carlo
    # error, the exact log P(X): with a barely trained encoder it is biased low, not high
    assert row["estimators_mc_elbo_mean"] <= row["estimators_is_log_p_mean"]
    assert row["estimators_is_log_p_mean"] < row["log_p_mean"] + 5 * row["estimators_is_log_p_mc_se"] + 1e-4
    assert row["decoder_orientation"] in ("+z", "-z")
    assert (out / "learned_decoder.png").exists() and (out / "learned_gap.png").exists()
    # seeded: the same settings give the same numbers
    again = learned_comparison(
        GaussianMixture1D(), [0.3], num_train=300, num_test=40, epochs=3, fine_tune_epochs=1,
        hidden_sizes=(16,), num_particles=400, num_points=128,
    )  # fmt: skip
    assert again["rows"][0]["gap_mean"] == row["gap_mean"]


def test_gaussian_likelihood_with_the_identity_link_reads_the_output_as_the_mean():
    from pyro_vae.likelihoods import GaussianLikelihood

    likelihood = GaussianLikelihood(0.1, link="identity")
    params = torch.tensor([[-3.0], [5.0]])
    distribution = likelihood(params)
    assert torch.equal(distribution.mean, params) and distribution.event_shape == (1,)
    assert torch.allclose(GaussianLikelihood(0.1)(params).mean, torch.sigmoid(params))
    assert not likelihood.sigmoid_mean and GaussianLikelihood(0.1).sigmoid_mean
    with pytest.raises(ConfigError):
        GaussianLikelihood(0.0, link="identity")
    with pytest.raises(ConfigError, match="unknown link 'exp'"):
        GaussianLikelihood(0.1, link="exp")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sigmas", "0", "0.1"], "--sigmas must be positive"),
        (["--sigmas", "-0.1", "0.1"], "--sigmas must be positive"),
        (["--sigmas", "0.1"], "at least two distinct"),
        (["--weights", "-0.3", "1.3"], "non-negative"),
        (["--weights", "0.5", "0.6"], "sum to one"),
        (["--weights", "0.3", "0.7", "--locs", "0"], "one value per component"),
        (["--scales", "0.5", "0"], "scales must be positive"),
        (["--learned", "--learned-sigmas", "0"], "--learned-sigmas must be positive"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_study(zero_error_1d.main, [*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()


def test_bad_input_from_the_shell(tmp_path):
    command = [
        sys.executable,
        "-m",
        "analysis.zero_error_1d",
        "--sigmas",
        "-1",
        "0.1",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --sigmas must be positive, got -1"]


def test_mixture_refuses_bad_parameters_directly():
    with pytest.raises(ConfigError, match="sum to one"):
        GaussianMixture1D([0.2, 0.2], [0, 1], [1, 1])
    with pytest.raises(ConfigError, match="positive scale"):
        Gumbel1D(0.0, -1.0)
