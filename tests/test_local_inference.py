"""q* and the inference gap against a linear-Gaussian model whose posterior is exact and Gaussian.

z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3): the posterior is N(m(x), Sigma) with
Sigma = (I + W^T W / s^2)^(-1), and log p(x) = log N(x; b, W W^T + s^2 I). The best full-covariance
Gaussian is the posterior itself (approximation gap 0); the best diagonal one has the posterior
mean and variances 1 / Lambda_ii (Lambda = Sigma^(-1)), and its gap is the closed form
KL = (sum_i log Lambda_ii - log det Lambda) / 2 (Cremer et al., 2018, section 3; Bishop, 2006, 10.1.2).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import estimators
from pyro_vae.guides import FullCovarianceEncoder
from pyro_vae.local_inference import local_guide, optimize_local_parameters, score_guide
from pyro_vae.nets import GaussianEncoder
from pyro_vae.priors import StandardNormalPrior
from pyro_vae.vae import VAE

W = torch.tensor([[1.0, 0.6], [-0.4, 0.9], [0.8, 0.8]], dtype=torch.float64)
B = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
S = 0.7
X = torch.tensor([[1.0, -0.5, 0.8], [-1.2, 0.3, 0.1], [0.4, 1.5, -0.9]], dtype=torch.float64)


class LinearDecoder(nn.Module):
    def forward(self, z):
        return dist.Normal(z @ W.T + B, S).to_event(1)


def exact_log_likelihood(x):
    return dist.MultivariateNormal(B, W @ W.T + S**2 * torch.eye(3, dtype=torch.float64)).log_prob(x)


def posterior_precision():
    return torch.eye(2, dtype=torch.float64) + W.T @ W / S**2


@pytest.fixture(autouse=True)
def float64_and_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def linear_vae(encoder):
    torch.manual_seed(0)
    return VAE(encoder, LinearDecoder(), StandardNormalPrior(2))


def test_full_covariance_optimum_is_the_exact_posterior():
    vae = linear_vae(FullCovarianceEncoder(3, [], 2))
    optimum = optimize_local_parameters(vae, X, lr=0.03, tolerance=1e-3)
    q_star = vae.encoder.distribution(optimum.params)
    sigma = torch.linalg.inv(posterior_precision())
    # The ELBO is flat to second order around the optimum: 0.002 nats allow a 0.02 error here.
    assert torch.allclose(q_star.covariance_matrix, sigma.expand(3, 2, 2), atol=0.03)
    scored = score_guide(vae, X, optimum.params, num_samples=4000)
    approximation_gap = exact_log_likelihood(X) - scored.elbo
    # Zero up to the optimizer (measured over seeds 1-4: at most 0.003 nats), against 0.0795 for
    # the diagonal family below; log w is nearly constant under the exact posterior, so the Monte
    # Carlo error of this ELBO is far smaller.
    assert approximation_gap.abs().max() < 0.01, approximation_gap
    amortized = score_guide(vae, X, num_samples=4000)
    assert (scored.elbo - amortized.elbo).min() > 0.5  # the untrained encoder is far from q*


def test_diagonal_optimum_gap_is_the_closed_form_kl():
    precision = posterior_precision()
    expected = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    assert expected > 0.05  # the posterior is correlated enough for the test to mean something
    vae = linear_vae(GaussianEncoder(3, [], 2))
    optimum = optimize_local_parameters(vae, X, lr=0.03, tolerance=1e-3)
    num_samples = 20000
    log_w = estimators.log_weight_terms(
        vae.model, local_guide(vae, optimum.params), X, num_samples=num_samples
    ).log_weights  # (K, 3)
    approximation_gap = exact_log_likelihood(X) - log_w.mean(0)
    standard_error = log_w.std(0) / num_samples**0.5  # about 0.002 nats
    # 4 standard errors of the Monte Carlo ELBO, and 0.003 nats for the optimizer's own error.
    assert ((approximation_gap - expected).abs() < 0.003 + 4 * standard_error).all(), approximation_gap
    q_star = vae.encoder.distribution(optimum.params).base_dist
    assert torch.allclose(q_star.scale, precision.diagonal().rsqrt().expand(3, 2), atol=0.01)


def test_optimization_leaves_the_model_as_it_was():
    vae = linear_vae(GaussianEncoder(3, [], 2))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    optimize_local_parameters(vae, X, max_steps=100)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert all(p.requires_grad for p in vae.parameters()) and vae.training


def test_nuts_draws_match_the_exact_posterior():
    """analysis.posterior's NUTS on the linear-Gaussian model: the draws' mean and covariance
    against N(m(x), Sigma), within 5 Monte Carlo standard errors (ESS from arviz)."""
    import arviz

    from analysis.posterior import sample_posterior

    vae = linear_vae(GaussianEncoder(3, [], 2))
    vae.requires_grad_(False)
    x = X[0]
    torch.manual_seed(0)
    draws = sample_posterior(vae, x, num_chains=2, num_samples=400, warmup_steps=300)  # (2, 400, 2)
    sigma = torch.linalg.inv(posterior_precision())
    mean = sigma @ W.T @ (x - B) / S**2
    flat = draws.reshape(-1, 2).double()
    ess = torch.tensor([float(arviz.ess(draws[..., d].numpy())) for d in range(2)], dtype=torch.float64)
    mean_se = sigma.diagonal().sqrt() / ess.sqrt()
    assert ((flat.mean(0) - mean).abs() < 5 * mean_se).all(), (flat.mean(0), mean)
    # the sample variance's standard error is about var * sqrt(2 / ESS)
    var_se = sigma.diagonal() * (2 / ess).sqrt()
    assert ((torch.cov(flat.T).diagonal() - sigma.diagonal()).abs() < 5 * var_se).all()
    correlation = torch.corrcoef(flat.T)[0, 1]
    exact = sigma[0, 1] / sigma.diagonal().prod().sqrt()
    assert abs(float(correlation - exact)) < 5 * float(1 - exact**2) / math.sqrt(float(ess.min()))
