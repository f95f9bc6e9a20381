"""The guide families: shapes, exact densities, rebuilding from config.json, and every consumer."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyro_vae import (
    RunConfig,
    TrainConfig,
    VAEConfig,
    build_vae,
    estimators,
    evaluate_run,
    load_run,
    train_run,
)
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import latent_statistics
from pyro_vae.guides import FullCovarianceEncoder, IAFEncoder, guide_location, guide_mean

GUIDES = ["gaussian", "full-cov", "iaf"]


@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_is_a_distribution_over_z_that_estimators_take(guide):
    vae = build_vae(VAEConfig(z_dim=5, hidden_sizes=(16,), guide=guide))
    x = torch.bernoulli(torch.rand(7, 784))
    q = vae.encoder(x)
    assert q.batch_shape == (7,) and q.event_shape == (5,)
    z = q.rsample((3,))
    assert z.shape == (3, 7, 5) and torch.isfinite(q.log_prob(z)).all()
    summary = estimators.summarize_log_weights(
        estimators.log_weight_terms(vae.model, vae.guide, x, num_samples=11), compute_khat=False
    )
    assert summary.elbo.shape == (7,) and (summary.log_likelihood >= summary.elbo - 1e-4).all()
    assert vae.reconstruct(x).shape == (7, 784)
    params = vae.encoder.local_parameters(x)
    assert params.shape == (7, vae.encoder.num_local_parameters)
    # forward(x) is distribution(local_parameters(x)); for the flow this scores z by inverting it
    assert torch.allclose(vae.encoder.distribution(params).log_prob(z), q.log_prob(z), atol=1e-4)


def test_full_covariance_density_is_the_multivariate_normal_of_its_factor():
    torch.manual_seed(0)
    encoder = FullCovarianceEncoder(6, [8], 3)
    x = torch.randn(4, 6)
    q = encoder(x)
    cov = q.covariance_matrix
    assert torch.allclose(cov, cov.transpose(-1, -2)) and (torch.linalg.eigvalsh(cov) > 0).all()
    assert (cov - torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))).abs().max() > 1e-3  # correlated
    z = q.sample()
    reference = torch.distributions.MultivariateNormal(q.loc, covariance_matrix=cov).log_prob(z)
    assert torch.allclose(q.log_prob(z), reference, atol=1e-5)


def test_iaf_density_is_the_change_of_variables():
    """log q(z) = log N(eps) - log|det dz/deps|, with the Jacobian by autograd on one datapoint."""
    torch.manual_seed(0)
    encoder = IAFEncoder(6, [8], 3, flow_layers=2).double()
    x = torch.randn(1, 6, dtype=torch.float64)
    params = encoder.local_parameters(x)
    q = encoder.distribution(params)
    eps = q.base_dist.sample()

    def push(e):
        z = e
        for transform in q.transforms:
            z = transform(z)
        return z

    z = push(eps)
    jacobian = torch.autograd.functional.jacobian(lambda e: push(e.unsqueeze(0))[0], eps[0])
    expected = q.base_dist.log_prob(eps) - torch.linalg.slogdet(jacobian).logabsdet
    assert torch.allclose(q.log_prob(z), expected, atol=1e-8)
    assert not torch.allclose(z, eps)  # the flow does something
    assert torch.allclose(guide_location(q), push(q.base_dist.mean))
    assert guide_mean(q, num_samples=10).shape == (1, 3)


@pytest.mark.parametrize("guide", ["full-cov", "iaf"])
def test_a_run_with_each_guide_rebuilds_and_evaluates(guide, tmp_path):
    config = RunConfig(
        model=VAEConfig(z_dim=4, hidden_sizes=(32,), guide=guide, flow_layers=1),
        train=TrainConfig(epochs=1, subset=300),
    )
    model, _ = train_run(config, tmp_path / guide, progress=False, log=None)
    loaded_config, loaded = load_run(tmp_path / guide)
    assert loaded_config.model.guide == guide
    x = torch.bernoulli(torch.rand(5, 784))
    torch.manual_seed(1)
    a = model.encoder(x).sample()
    torch.manual_seed(1)
    assert torch.equal(a, loaded.encoder(x).sample())  # same weights, same flow orderings
    report, _ = evaluate_run(tmp_path / guide, num_samples=8, subset=20, progress=False)
    assert report["elbo"] <= report["log_likelihood"]
    stats = latent_statistics(loaded, x)
    assert stats.activity.shape == (4,) and stats.kl_per_datapoint.shape == (5,)
    assert (stats.kl_per_datapoint > 0).all()


def test_full_covariance_kl_is_the_closed_form():
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(z_dim=3, hidden_sizes=(8,), guide="full-cov"))
    x = torch.bernoulli(torch.rand(6, 784))
    q = vae.encoder(x)
    stats = latent_statistics(vae, x)
    prior = dist.MultivariateNormal(torch.zeros(3), torch.eye(3))
    expected = torch.distributions.kl_divergence(q, prior)
    assert torch.allclose(stats.kl_per_datapoint.float(), expected, atol=1e-5)
    marginal = dist.Normal(q.loc, q.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt())
    expected = torch.distributions.kl_divergence(marginal, dist.Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(stats.kl_per_unit.float(), expected, atol=1e-5)


def test_vamp_prior_with_a_flow_guide_is_refused():
    with pytest.raises(ConfigError, match="vamp prior needs a gaussian or full-cov guide"):
        VAEConfig(prior="vamp", guide="iaf")
    with pytest.raises(ConfigError, match="unknown guide"):
        VAEConfig(guide="planar")
