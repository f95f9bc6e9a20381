"""Networks, likelihood heads, the prior and the VAE's model/guide contract."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_vae import VAEConfig, build_vae
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.likelihoods import BernoulliLikelihood, GaussianLikelihood
from pyro_vae.nets import MLP, GaussianEncoder
from pyro_vae.priors import StandardNormalPrior

SMALL = VAEConfig(z_dim=4, hidden_sizes=(32, 16))


def test_default_architecture_is_the_tutorials():
    vae = build_vae(VAEConfig())
    linear = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Linear)]
    layers = [(m.in_features, m.out_features) for m in linear]
    assert layers == [(784, 1000), (1000, 500), (500, 250), (250, 60)]
    linear = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)]
    layers = [(m.in_features, m.out_features) for m in linear]
    assert layers == [(30, 250), (250, 500), (500, 1000), (1000, 784)]


def test_mlp_has_relu_between_layers_only():
    mlp = MLP(3, [5, 7], 2)
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_encoder_returns_diagonal_normal_over_z_for_any_leading_shape():
    encoder = GaussianEncoder(784, [16], 3)
    q = encoder(torch.rand(5, 784))
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    assert torch.all(q.base_dist.scale > 0)
    assert encoder(torch.rand(2, 5, 784)).batch_shape == (2, 5)


def test_bernoulli_head_log_prob_is_the_binary_cross_entropy():
    logits = torch.randn(4, 6)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(BernoulliLikelihood()(logits).log_prob(x), expected, atol=1e-5)


def test_gaussian_head_log_prob_matches_the_closed_form():
    sigma, params = 0.3, torch.randn(4, 6)
    x = torch.rand(4, 6)
    mean = torch.sigmoid(params)
    expected = -(x - mean).pow(2).sum(-1) / (2 * sigma**2) - 6 * math.log(math.sqrt(2 * math.pi) * sigma)
    assert torch.allclose(GaussianLikelihood(sigma)(params).log_prob(x), expected, atol=1e-4)
    assert torch.allclose(GaussianLikelihood(sigma)(params).mean, mean)


def test_bernoulli_refuses_grayscale_and_says_what_to_do():
    with pytest.raises(DataError, match="binarize"):
        BernoulliLikelihood().check_data(torch.tensor([[0.0, 0.4, 1.0]]))
    BernoulliLikelihood().check_data(torch.tensor([[0.0, 1.0, 1.0]]))
    with pytest.raises(DataError, match="outside its support"):
        GaussianLikelihood(0.1).check_data(torch.tensor([[0.0, float("nan")]]))


def test_standard_normal_prior_moves_with_the_module():
    prior = StandardNormalPrior(3)
    p = prior()
    assert (
        p.event_shape == (3,) and torch.equal(p.mean, torch.zeros(3)) and torch.equal(p.stddev, torch.ones(3))
    )
    assert set(dict(prior.named_buffers())) == {"loc", "scale"}


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="z_dim"):
        VAEConfig(z_dim=0)
    with pytest.raises(ConfigError, match="available: bernoulli, gaussian"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ConfigError, match="sigma"):
        VAEConfig(likelihood="gaussian", sigma=0.0)


def test_model_and_guide_have_matching_sites_and_shapes():
    vae = build_vae(SMALL)
    x = torch.bernoulli(torch.rand(7, 784))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    guide_latents = {
        n
        for n, s in guide_trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and n != "data"
    }
    model_latents = {
        n
        for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and n != "data"
    }
    assert guide_latents == model_latents == {"z"}
    assert model_trace.nodes["x"]["is_observed"]
    assert model_trace.nodes["z"]["value"].shape == guide_trace.nodes["z"]["value"].shape == (7, 4)
    for trace in (guide_trace, model_trace):
        frames = [f.name for f in trace.nodes["z"]["cond_indep_stack"]]
        assert frames == ["data"]
    model_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape == (7,)


def test_one_svi_step_is_finite_and_moves_every_network():
    vae = build_vae(SMALL)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    x = torch.bernoulli(torch.rand(16, 784))
    pyro.set_rng_seed(7)
    expected = Trace_ELBO().loss(vae.model, vae.guide, x)  # -ELBO at the weights before the step
    pyro.set_rng_seed(7)
    loss = svi.step(x)
    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=1e-6)
    moved = {k.split(".")[0] for k, v in vae.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {"encoder", "decoder"}


def test_trace_elbo_loss_matches_the_closed_form_kl_decomposition():
    """Trace_ELBO averaged over many particles = E_q[log p(x|z)] - KL(q || p) with Eq. 7's KL."""
    vae = build_vae(SMALL)
    x = torch.bernoulli(torch.rand(3, 784))
    with torch.no_grad():
        q = vae.encoder(x)
        loc, scale = q.base_dist.loc, q.base_dist.scale
        kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - scale.pow(2).log()).sum(-1)  # Eq. 7
        z = q.sample((20_000,))
        log_lik = vae.decoder(z).log_prob(x)  # (20000, 3)
    expected = float((log_lik.mean(0) - kl).sum())
    standard_error = float(log_lik.std(0).pow(2).sum().sqrt() / math.sqrt(20_000))
    loss = Trace_ELBO(num_particles=20_000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        value = -loss.loss(vae.model, vae.guide, x)
    assert value == pytest.approx(expected, abs=5 * standard_error * math.sqrt(2))


def test_sample_images_and_reconstructions_are_intensities():
    vae = build_vae(SMALL)
    images = vae.sample_images(6)
    assert images.shape == (6, 784) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert vae.reconstruct(torch.rand(2, 784)).shape == (2, 784)
    assert pyro.get_param_store().keys() == set()  # figure helpers leave Pyro's store alone


def test_factorized_bernoulli_equals_independent_bernoullis():
    from pyro_vae.distributions import FactorizedBernoulli

    logits = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    x = torch.bernoulli(torch.full((3, 7), 0.5, dtype=torch.float64))
    fused, reference = FactorizedBernoulli(logits), dist.Bernoulli(logits=logits).to_event(1)
    assert fused.batch_shape == reference.batch_shape and fused.event_shape == reference.event_shape
    assert torch.allclose(fused.log_prob(x), reference.log_prob(x), atol=1e-12)  # training path
    with torch.no_grad():  # scoring path: the fused two-term form, broadcasting x against logits
        assert torch.allclose(fused.log_prob(x), reference.log_prob(x), atol=1e-12)
    (g_fused,) = torch.autograd.grad(fused.log_prob(x).sum(), logits)
    (g_reference,) = torch.autograd.grad(reference.log_prob(x).sum(), logits)
    assert torch.allclose(g_fused, g_reference, atol=1e-12)
    assert torch.allclose(fused.entropy(), reference.entropy(), atol=1e-12)
    assert torch.allclose(fused.mean, torch.sigmoid(logits))
    expanded = FactorizedBernoulli(logits.detach()[0]).expand((4, 3))
    assert expanded.batch_shape == (4, 3) and expanded.sample().shape == (4, 3, 7)
    draws = FactorizedBernoulli(torch.zeros(20_000, 7)).sample()
    assert abs(float(draws.mean()) - 0.5) < 4 * 0.5 / (20_000 * 7) ** 0.5
