"""Estimators against closed forms: a linear-Gaussian latent model (probabilistic PCA).

Model: z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D). Then exactly
    p(x)     = N(x | b, W W^T + s^2 I),
    p(z | x) = N(z | M^{-1} W^T (x - b) / s^2, M^{-1}),  M = I + W^T W / s^2
(Tipping & Bishop, 1999). Every tolerance below is a multiple of a Monte Carlo standard error.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO

from pyro_vae import estimators
from pyro_vae.errors import EstimatorMemoryError, ModelStructureError

LATENT, OBSERVED, NOISE = 2, 5, 0.5


class PPCA:
    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(OBSERVED, LATENT, generator=g, dtype=torch.float64)
        self.b = torch.randn(OBSERVED, generator=g, dtype=torch.float64)
        precision = torch.eye(LATENT, dtype=torch.float64) + self.W.T @ self.W / NOISE**2
        self.post_cov = torch.linalg.inv(precision)
        self.guide_shift = torch.zeros(LATENT, dtype=torch.float64)
        self.guide_scale_factor = 1.0

    def data(self, num, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(num, LATENT, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + NOISE * torch.randn(num, OBSERVED, generator=g, dtype=torch.float64)

    def exact_log_likelihood(self, x):
        cov = self.W @ self.W.T + NOISE**2 * torch.eye(OBSERVED, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def post_mean(self, x):
        return (x - self.b) @ self.W @ self.post_cov / NOISE**2  # (B, d); post_cov is symmetric

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(LATENT, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, NOISE).to_event(1), obs=x)

    def guide(self, x):
        """The exact posterior, or a deliberately wrong one after :meth:`make_guide_wrong`."""
        cov = self.post_cov * self.guide_scale_factor**2
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z", dist.MultivariateNormal(self.post_mean(x) + self.guide_shift, covariance_matrix=cov)
            )

    def make_guide_wrong(self):
        self.guide_shift = torch.tensor([0.4, -0.3], dtype=torch.float64)
        self.guide_scale_factor = 1.6
        return self

    def guide_kl_to_posterior(self, x):
        """KL(q(z|x) || p(z|x)) for the current guide, in closed form (both Gaussian)."""
        q = dist.MultivariateNormal(
            self.post_mean(x) + self.guide_shift, covariance_matrix=self.post_cov * self.guide_scale_factor**2
        )
        p = dist.MultivariateNormal(self.post_mean(x), covariance_matrix=self.post_cov)
        return torch.distributions.kl_divergence(q, p)


def test_exact_posterior_gives_exact_log_likelihood_for_every_k_and_particle():
    ppca = PPCA()
    x = ppca.data(6)
    exact = ppca.exact_log_likelihood(x)
    for k in (1, 7, 100):
        log_w = estimators.log_weights(ppca.model, ppca.guide, x, num_samples=k, chunk_size=3)
        assert log_w.shape == (k, 6)
        # with q = p(z|x), w = p(x, z) / p(z|x) = p(x) for every z
        assert torch.allclose(log_w, exact.expand(k, 6), atol=1e-9)
        assert torch.allclose(estimators.log_mean_exp(log_w), exact, atol=1e-9)
        assert torch.allclose(estimators.elbo_from_log_weights(log_w), exact, atol=1e-9)
        assert torch.allclose(
            estimators.effective_sample_size(log_w), torch.full((6,), float(k), dtype=torch.float64)
        )
    assert torch.allclose(
        estimators.log_mean_exp_standard_error(log_w), torch.zeros(6, dtype=torch.float64), atol=1e-6
    )


def test_wrong_guide_elbo_is_exact_minus_analytic_kl():
    """Eq. 5 of the tutorial: ELBO = log p(x) - KL(q(z|x) || p(z|x)), checked per datapoint."""
    ppca = PPCA().make_guide_wrong()
    x = ppca.data(4)
    k = 20_000
    log_w = estimators.log_weights(ppca.model, ppca.guide, x, num_samples=k)
    expected = ppca.exact_log_likelihood(x) - ppca.guide_kl_to_posterior(x)
    standard_error = log_w.std(0) / math.sqrt(k)
    assert torch.all((log_w.mean(0) - expected).abs() < 4 * standard_error)
    assert torch.all(ppca.guide_kl_to_posterior(x) > 0.1)  # the guide really is wrong


def test_importance_sampled_estimate_increases_with_k_and_approaches_the_exact_value():
    """E[log p-hat_K] <= log p(x), non-decreasing in K (Burda et al., 2016, Theorem 1).

    One datapoint repeated 400 times in the batch gives 400 independent estimates per K.
    """
    ppca = PPCA().make_guide_wrong()
    x = ppca.data(1).expand(400, OBSERVED)
    exact = float(ppca.exact_log_likelihood(x[:1]))
    means, errors = [], []
    for k in (1, 4, 16, 64, 256, 1024):
        estimates = estimators.log_likelihood(ppca.model, ppca.guide, x, num_samples=k)
        means.append(float(estimates.mean()))
        errors.append(float(estimates.std() / math.sqrt(len(estimates))))
    for (m_small, e_small), (m_large, e_large) in zip(zip(means, errors), zip(means[1:], errors[1:])):
        assert m_large > m_small - 3 * math.hypot(e_small, e_large)
    assert means[-1] > means[0] + 0.1  # the bound tightens visibly
    assert all(m < exact + 3 * e for m, e in zip(means, errors))
    assert abs(means[-1] - exact) < max(3 * errors[-1], 0.01)


def test_standard_error_formula_matches_the_spread_of_repeated_estimates():
    ppca = PPCA().make_guide_wrong()
    x = ppca.data(1).expand(2000, OBSERVED)
    log_w = estimators.log_weights(ppca.model, ppca.guide, x, num_samples=200)
    predicted = float(estimators.log_mean_exp_standard_error(log_w).mean())
    observed = float(estimators.log_mean_exp(log_w).std())
    assert predicted == pytest.approx(observed, rel=0.15)


def test_matches_renyi_alpha_zero_on_a_single_image_with_the_same_draws():
    """RenyiELBO(alpha=0) is the IWAE bound of the whole batch; on one image it equals ours."""
    ppca = PPCA().make_guide_wrong()
    x = ppca.data(1)
    k = 500
    pyro.set_rng_seed(7)
    renyi = -RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1).loss(
        ppca.model, ppca.guide, x
    )
    pyro.set_rng_seed(7)
    ours = float(estimators.log_likelihood(ppca.model, ppca.guide, x, num_samples=k, chunk_size=k))
    assert ours == pytest.approx(renyi, abs=1e-9)


def test_batch_and_particle_chunking_do_not_change_per_datapoint_values():
    ppca = PPCA()
    x = ppca.data(10)
    whole = estimators.log_weights(ppca.model, ppca.guide, x, num_samples=9)
    pieces = estimators.log_weights(ppca.model, ppca.guide, x, num_samples=9, chunk_size=2, batch_size=3)
    assert torch.allclose(whole, pieces, atol=1e-9)  # exact guide: all weights equal log p(x)


def test_terms_split_the_elbo_into_distortion_and_rate():
    ppca = PPCA().make_guide_wrong()
    x = ppca.data(3)
    terms = estimators.log_weight_terms(ppca.model, ppca.guide, x, num_samples=4000)
    summary = estimators.summarize_log_weights(terms, compute_khat=False)
    assert torch.allclose(-summary.distortion - summary.rate, summary.elbo, atol=1e-9)
    # the rate estimates KL(q(z|x) || N(0, I)) in closed form
    q = dist.MultivariateNormal(
        ppca.post_mean(x) + ppca.guide_shift, covariance_matrix=ppca.post_cov * 1.6**2
    )
    prior = dist.MultivariateNormal(
        torch.zeros(LATENT, dtype=torch.float64), torch.eye(LATENT, dtype=torch.float64)
    )
    kl = torch.distributions.kl_divergence(q, prior)
    rate_se = (terms.guide - terms.latent).std(0) / math.sqrt(4000)
    assert torch.all((summary.rate - kl).abs() < 4 * rate_se)


def test_pareto_khat_sign_convention_against_pyro_fit_generalized_pareto():
    """arviz.psislw takes log-weights: heavy-tailed weights give k-hat near the true tail index.

    Weights w ~ Pareto(alpha) have a generalized Pareto tail with k = 1 / alpha. We check
    arviz's k-hat against Pyro's Zhang-Stephens fit on the same largest weights, and that
    negated log-weights (the LOO convention) would give a negative k.
    """
    from pyro.ops.stats import fit_generalized_pareto

    rng = np.random.default_rng(0)
    k_true, num = 0.9, 4000
    weights = rng.pareto(1 / k_true, size=(20, num)) + 1.0
    log_w = torch.as_tensor(np.log(weights)).T  # (K, B)
    khat = estimators.pareto_khat(log_w)
    tail = int(min(num / 5, 3 * math.sqrt(num)))
    for b in range(20):
        ordered = torch.sort(log_w[:, b]).values
        exceedances = ordered[-tail:].exp() - ordered[-tail - 1].exp()
        k_pyro, _ = fit_generalized_pareto(exceedances)
        assert float(khat[b]) == pytest.approx(k_pyro, abs=0.05)
    assert float(khat.mean()) == pytest.approx(k_true, abs=0.1)
    assert float((khat > estimators.KHAT_THRESHOLD).float().mean()) > 0.7
    assert float(estimators.pareto_khat(-log_w).mean()) < 0


def test_model_without_data_plate_is_refused():
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ModelStructureError, match="'z' of the guide is not inside"):
        estimators.log_weights(model, guide, torch.zeros(3), num_samples=2)

    def plateless(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1), obs=x)

    with pytest.raises(ModelStructureError, match="not inside a vectorized pyro.plate"):
        estimators.log_weights(plateless, lambda x: None, torch.zeros(3), num_samples=2)


def test_bad_particle_counts_and_memory_errors_are_explained(monkeypatch):
    ppca = PPCA()
    x = ppca.data(2)
    with pytest.raises(ValueError, match="K >= 1"):
        estimators.log_weights(ppca.model, ppca.guide, x, num_samples=0)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(estimators, "_chunk_log_weight_terms", out_of_memory)
    with pytest.raises(EstimatorMemoryError, match=r"use chunk_size=25 \(--chunk-size 25\)"):
        estimators.log_weights(ppca.model, ppca.guide, x, num_samples=1000, chunk_size=100)
