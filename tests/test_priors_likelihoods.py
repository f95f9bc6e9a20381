"""Every prior and likelihood: densities against scipy or a closed form, sampling moments, one SVI
step, a short training run; the continuous Bernoulli normalizer against numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import integrate, stats

from pyro_vae import VAEConfig, build_vae, train
from pyro_vae.builders import LIKELIHOODS, PRIORS
from pyro_vae.data import binarize, load_mnist
from pyro_vae.distributions import FactorizedContinuousBernoulli, continuous_bernoulli_log_normalizer
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLearnedLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
)
from pyro_vae.nets import GaussianEncoder
from pyro_vae.priors import MixtureOfGaussiansPrior, ScaledNormalPrior, StandardNormalPrior, VampPrior

D = 6


def params_and_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, D, generator=g, dtype=torch.float64), torch.rand(
        4, D, generator=g, dtype=torch.float64
    )


def test_likelihood_log_probs_match_scipy():
    params, x = params_and_data()
    mean = torch.sigmoid(params).numpy()
    binary = (x > 0.5).double()
    expected = {
        "bernoulli": stats.bernoulli(mean).logpmf(binary.numpy()).sum(-1),
        "gaussian": stats.norm(mean, 0.3).logpdf(x.numpy()).sum(-1),
        "laplace": stats.laplace(mean, 0.3).logpdf(x.numpy()).sum(-1),
    }
    heads = {
        "bernoulli": BernoulliLikelihood(),
        "gaussian": GaussianLikelihood(0.3),
        "laplace": LaplaceLikelihood(0.3),
    }
    for name, head in heads.items():
        data = binary if name == "bernoulli" else x
        assert np.allclose(head(params).log_prob(data).numpy(), expected[name], atol=1e-9), name


@pytest.mark.parametrize("per_pixel", [False, True])
def test_learned_gaussian_matches_scipy_and_learns_its_sigma(per_pixel):
    head = GaussianLearnedLikelihood(D, per_pixel=per_pixel, init_sigma=0.2).double()
    assert torch.allclose(head.sigma, torch.tensor(0.2, dtype=torch.float64))
    assert head.raw_sigma.shape == ((D,) if per_pixel else (1,))
    params, x = params_and_data()
    expected = stats.norm(torch.sigmoid(params).numpy(), 0.2).logpdf(x.numpy()).sum(-1)
    assert np.allclose(head(params).log_prob(x).detach().numpy(), expected, atol=1e-9)
    # the maximum-likelihood sigma of fixed residuals is their RMS: gradient ascent finds it
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(1500):
        optimizer.zero_grad()
        (-head(params).log_prob(x).sum()).backward()
        optimizer.step()
    residual = x - torch.sigmoid(params)
    rms = residual.pow(2).mean(0).sqrt() if per_pixel else residual.pow(2).mean().sqrt()
    assert torch.allclose(head.sigma.detach(), rms.expand_as(head.sigma), rtol=0.02)


@pytest.mark.parametrize("eta", [0.0, 1e-7, 1e-4, 0.0099, 0.0101, 0.3, -2.0, 5.0, 40.0, -300.0])
def test_continuous_bernoulli_normalizer_against_numerical_integration(eta):
    """C(eta) makes C exp(eta x - softplus(eta)) integrate to 1 on [0, 1], also at and near eta = 0."""
    shift = max(eta, 0.0)  # integrate exp(eta x - shift) to avoid overflow
    integral, _ = integrate.quad(lambda t: math.exp(eta * t - shift), 0.0, 1.0, epsabs=1e-15, epsrel=1e-13)
    softplus = shift + math.log1p(math.exp(-abs(eta)))
    expected = -(math.log(integral) + shift - softplus)
    ours = float(continuous_bernoulli_log_normalizer(torch.tensor(eta, dtype=torch.float64)))
    assert ours == pytest.approx(expected, abs=1e-12)


def test_continuous_bernoulli_density_mean_and_samples():
    logits = torch.tensor([[0.0, 1e-5, 2.0, -3.0, 8.0]], dtype=torch.float64)
    cb = FactorizedContinuousBernoulli(logits)
    reference = torch.distributions.ContinuousBernoulli(logits=logits)  # accurate for moderate logits
    x = torch.tensor([[0.1, 0.5, 0.7, 0.2, 0.95]], dtype=torch.float64)
    assert torch.allclose(cb.log_prob(x), reference.log_prob(x).sum(-1), atol=1e-6)
    assert torch.allclose(cb.mean, reference.mean, atol=1e-6)
    draws = cb.sample((40_000,))
    assert float(draws.min()) >= 0 and float(draws.max()) <= 1
    standard_error = reference.variance.sqrt() / math.sqrt(40_000)
    assert torch.all((draws.mean(0) - cb.mean).abs() < 4 * standard_error)
    assert ContinuousBernoulliLikelihood().support.check(torch.tensor(1.2)) == torch.tensor(False)
    expanded = FactorizedContinuousBernoulli(logits[0]).expand((3,))
    assert expanded.batch_shape == (3,) and expanded.sample().shape == (3, 5)
    assert torch.allclose(expanded.log_prob(x[0]), cb.log_prob(x).expand(3))


def test_likelihood_sampling_moments():
    params = torch.randn(1, D)
    for head in (BernoulliLikelihood(), GaussianLikelihood(0.2), LaplaceLikelihood(0.2)):
        d = head(params)
        draws = d.sample((20_000,))
        standard_error = d.variance.sqrt() / math.sqrt(20_000)
        assert torch.all((draws.mean(0) - d.mean).abs() < 4 * standard_error), type(head).__name__


def test_likelihoods_refuse_data_outside_their_support():
    grayscale = torch.tensor([[0.0, 0.3, 1.0]])
    with pytest.raises(DataError, match="binarize the images"):
        BernoulliLikelihood().check_data(grayscale)
    with pytest.raises(DataError, match=r"intensities in \[0, 1\]"):
        ContinuousBernoulliLikelihood().check_data(torch.tensor([[0.5, 1.5]]))
    ContinuousBernoulliLikelihood().check_data(grayscale)


def test_prior_log_probs_against_closed_forms():
    z = torch.randn(5, 3)
    scaled = ScaledNormalPrior(3, 2.5)()
    assert np.allclose(scaled.log_prob(z).numpy(), stats.norm(0, 2.5).logpdf(z.numpy()).sum(-1), atol=1e-5)
    mixture = MixtureOfGaussiansPrior(3, 4)
    weights = torch.softmax(mixture.logits, 0).detach().numpy()
    locs = mixture.locs.detach().numpy()
    scales = (torch.nn.functional.softplus(mixture.raw_scales) + 1e-5).detach().numpy()
    components = np.stack([stats.norm(locs[k], scales[k]).logpdf(z.numpy()).sum(-1) for k in range(4)])
    expected = np.log((weights[:, None] * np.exp(components)).sum(0))
    assert np.allclose(mixture().log_prob(z).detach().numpy(), expected, atol=1e-5)
    encoder = GaussianEncoder(D, [8], 3)
    vamp = VampPrior(encoder, 5, D)
    q = encoder(vamp.pseudo_inputs)
    loc, scale = q.base_dist.loc.detach().numpy(), q.base_dist.scale.detach().numpy()
    components = np.stack([stats.norm(loc[k], scale[k]).logpdf(z.numpy()).sum(-1) for k in range(5)])
    expected = np.log(np.exp(components).mean(0))
    assert np.allclose(vamp().log_prob(z).detach().numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("prior", ["standard", "scaled", "mixture", "vamp"])
def test_prior_sampling_moments(prior):
    vae = build_vae(VAEConfig(z_dim=2, hidden_sizes=(8,), prior=prior, prior_scale=2.0, num_components=3))
    p = vae.prior()
    with torch.no_grad():
        draws = p.sample((40_000,))
        mean, variance = p.mean, p.variance
    assert draws.shape == (40_000, 2)
    assert torch.all((draws.mean(0) - mean).abs() < 4 * (variance / 40_000).sqrt())
    assert torch.allclose(draws.var(0), variance, rtol=0.05)


def test_context_sets_the_batch_shape_of_unconditional_priors():
    h = torch.zeros(7, 5)
    for prior in (StandardNormalPrior(3), ScaledNormalPrior(3, 2.0), MixtureOfGaussiansPrior(3, 2)):
        assert prior(h).batch_shape == (7,) and prior().batch_shape == ()


COMBINATIONS = [("bernoulli", p) for p in PRIORS] + [
    (lik, "standard") for lik in LIKELIHOODS if lik != "bernoulli"
]


@pytest.mark.parametrize("likelihood, prior", COMBINATIONS)
def test_every_prior_and_likelihood_trains(likelihood, prior, small_train_images):
    """One SVI step is finite, and three short epochs raise the validation ELBO (Trace_ELBO)."""
    config = VAEConfig(
        z_dim=4, hidden_sizes=(64,), likelihood=likelihood, prior=prior, num_components=5, prior_scale=3.0
    )
    torch.manual_seed(0)
    vae = build_vae(config)
    images = small_train_images[:1000]
    binary = likelihood == "bernoulli"
    valid = (
        binarize(small_train_images[1000:1300], torch.Generator().manual_seed(0))
        if binary
        else (small_train_images[1000:1300])
    )
    history = train(
        vae,
        (images,),
        (valid,),
        epochs=3,
        batch_size=100,
        lr=3e-3,
        batch_transform=(lambda x: (binarize(x),)) if binary else None,
        progress=False,
        log=None,
    )
    assert all(math.isfinite(v) for v in history.train_elbo + history.valid_elbo)
    assert history.valid_elbo[-1] > history.valid_elbo[0]


@pytest.mark.parametrize("prior", ["scaled", "mixture", "vamp"])
def test_meanfield_objective_runs_with_every_prior(prior, small_train_images):
    """TraceMeanField_ELBO uses the closed-form KL where one exists and samples it otherwise."""
    from pyro.infer import TraceMeanField_ELBO

    vae = build_vae(VAEConfig(z_dim=3, hidden_sizes=(32,), prior=prior, num_components=3))
    x = binarize(small_train_images[:64])
    pyro.set_rng_seed(3)
    value = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    # By hand with the same draw of z: -log P(x|z) plus KL(Q || P(z)), in closed form for the
    # scaled Gaussian prior, sampled (log Q(z) - log P(z) at that z) for the mixtures.
    pyro.set_rng_seed(3)
    q = vae.encoder(x)
    z = q.rsample()
    prior_z = vae.prior()
    if prior == "scaled":
        kl = torch.distributions.kl_divergence(q, prior_z)
    else:
        kl = q.log_prob(z) - prior_z.log_prob(z)
    expected = -(vae.decoder(z).log_prob(x) - kl).sum()
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    pyro.clear_param_store()


def test_unknown_names_list_the_available_ones():
    with pytest.raises(ConfigError, match="available: standard, scaled, mixture, vamp"):
        VAEConfig(prior="flow")
    with pytest.raises(ConfigError, match="available: bernoulli, gaussian, gaussian-learned"):
        VAEConfig(likelihood="poisson")


def test_grayscale_run_with_a_bernoulli_likelihood_is_impossible(tmp_path):
    """The run machinery binarizes for Bernoulli and refuses grayscale data for it."""
    from pyro_vae.builders import RunConfig, TrainConfig
    from pyro_vae.runs import load_training_data

    config = RunConfig(model=VAEConfig(z_dim=2, hidden_sizes=(8,)), train=TrainConfig(subset=100))
    _, valid, transform = load_training_data(config)
    assert set(valid[0].unique().tolist()) <= {0.0, 1.0}
    assert set(transform(load_mnist("train", subset=10).images)[0].unique().tolist()) <= {0.0, 1.0}


def test_the_laplace_scale_is_its_own_option_not_sigma():
    x = torch.rand(4, 784)
    params = torch.randn(4, 784)
    vae = build_vae(VAEConfig(likelihood="laplace", likelihood_options={"scale": 0.3}))
    expected = stats.laplace(torch.sigmoid(params).numpy(), 0.3).logpdf(x.numpy()).sum(-1)
    np.testing.assert_allclose(vae.likelihood(params).log_prob(x).numpy(), expected, rtol=1e-5)
    assert build_vae(VAEConfig(likelihood="laplace")).likelihood.scale == 0.1  # the default b
    with pytest.raises(ConfigError, match="--likelihood-option scale="):
        VAEConfig(likelihood="laplace", sigma=0.3)
    # a configuration written when sigma doubled as the Laplace scale reads with the same model
    old = VAEConfig.from_dict({"likelihood": "laplace", "sigma": 0.3})
    assert old.likelihood_options == {"scale": 0.3} and build_vae(old).likelihood.scale == 0.3
