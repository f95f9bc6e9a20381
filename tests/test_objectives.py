r"""The IWAE objectives against a linear-Gaussian model whose log p(x) is exact.

Model: z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3), so p(x) = N(x | b, W W^T + s^2 I). The guide
q(z | x) = N(A x + c, diag(exp(2 log_s))) starts from the exact posterior mean map but shrunk,
shifted and with 1.5x the posterior marginal standard deviations: a diagonal, overdispersed guide,
so every bound is strict while the importance weights keep a finite variance. Decoder parameters
are theta, encoder parameters phi. Tolerances are multiples of Monte Carlo standard errors.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch import nn

from pyro_vae.errors import ConfigError, ModelStructureError
from pyro_vae.objectives import IWAE_ELBO, IWAE_DReG_ELBO, detach_parameters

OBJECTIVES = [IWAE_ELBO, IWAE_DReG_ELBO]


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -0.7]]))
        self.b = nn.Parameter(torch.tensor([0.2, -0.1, 0.4]))
        self.log_s = nn.Parameter(torch.tensor(math.log(0.7)))

    def forward(self, z):
        return dist.Normal(z @ self.W.T + self.b, self.log_s.exp()).to_event(1)

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.log_s.exp() ** 2 * torch.eye(3)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)


class Encoder(nn.Module):
    def __init__(self, decoder: Decoder):
        super().__init__()
        with torch.no_grad():
            s2 = decoder.log_s.exp() ** 2
            post_cov = torch.linalg.inv(torch.eye(2) + decoder.W.T @ decoder.W / s2)
            gain = post_cov @ decoder.W.T / s2  # exact posterior mean = gain (x - b)
        self.A = nn.Parameter(0.8 * gain)
        self.c = nn.Parameter(-gain @ decoder.b + 0.3)
        self.log_s = nn.Parameter((1.5 * post_cov.diagonal().sqrt()).log())

    def forward(self, x):
        return dist.Normal(x @ self.A.T + self.c, self.log_s.exp()).to_event(1)


class LinearGaussian:
    def __init__(self):
        self.decoder = Decoder()
        self.encoder = Encoder(self.decoder)
        self.theta = list(self.decoder.parameters())
        self.phi = list(self.encoder.parameters())

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", self.decoder(z), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(x))

    @torch.no_grad()
    def direct_log_weights(self, x, num_particles):
        """log w, ``(K, B)``, sampled with plain torch (no Pyro, no objective)."""
        q = self.encoder(x)
        z = q.sample((num_particles,))  # (K, B, 2)
        return self.decoder(z).log_prob(x) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z)


class NestedLinearGaussian(LinearGaussian):
    """The same model with the data plate at dim -2 and an inner plate over the 3 coordinates."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1, 2), 1.0).to_event(1))  # batch (B, 1)
            with pyro.plate("coords", 3, dim=-1):
                loc = (z @ self.decoder.W.T + self.decoder.b).squeeze(-2)  # (..., B, 3)
                pyro.sample("x", dist.Normal(loc, self.decoder.log_s.exp()), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], dim=-2):
            e = self.encoder
            pyro.sample("z", dist.Normal((x @ e.A.T + e.c).unsqueeze(-2), e.log_s.exp()).to_event(1))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine two threads
    made the Monte Carlo tests ~40x slower (spinning workers); run this module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


X0 = torch.tensor([[1.0, -0.5, 0.8]])
BATCH = torch.tensor([[1.0, -0.5, 0.8], [-1.2, 0.3, 0.1], [0.4, 1.5, -0.9], [2.0, -1.0, 1.3]])


def loss_and_grads(objective, lg, x, params):
    loss = objective.differentiable_loss(lg.model, lg.guide, x)
    return loss.detach(), torch.autograd.grad(loss, params)


def same_draws(*setups, params, seed: int) -> list:
    """``loss_and_grads`` of each (objective, model) in ``setups`` on BATCH, every one from the same seed."""
    results = []
    for objective, model in setups:
        pyro.set_rng_seed(seed)
        results.append(loss_and_grads(objective, model, BATCH, params))
    return results


def bound_per_datapoint(objective, lg, x, num_calls):
    """Mean over ``num_calls`` calls of the bound per datapoint of ``x``, and its standard error."""
    values = torch.tensor([-objective.loss(lg.model, lg.guide, x) / x.shape[0] for _ in range(num_calls)])
    return values.mean().item(), values.std().item() / math.sqrt(num_calls)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("num_particles", [0, -1, 2.5, True])
def test_bad_num_particles_is_a_config_error(objective, num_particles):
    with pytest.raises(ConfigError, match="num_particles") as info:
        objective(num_particles)
    assert "\n" not in str(info.value)


def test_one_particle_is_the_elbo():
    """K = 1: the same draw as Trace_ELBO, hence the same value and the same gradient."""
    lg = LinearGaussian()
    params = lg.theta + lg.phi
    pyro.set_rng_seed(1)
    value, grads = loss_and_grads(IWAE_ELBO(1), lg, BATCH, params)
    pyro.set_rng_seed(1)
    elbo_value, elbo_grads = loss_and_grads(pyro.infer.Trace_ELBO(), lg, BATCH, params)
    assert torch.allclose(value, elbo_value, rtol=1e-6)
    for g, h in zip(grads, elbo_grads):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-6)
    pyro.set_rng_seed(1)
    assert IWAE_ELBO(1).loss(lg.model, lg.guide, BATCH) == pytest.approx(value.item(), rel=1e-6)
    pyro.set_rng_seed(2)  # another draw: a different value, so the equalities above are not vacuous
    assert abs(IWAE_ELBO(1).loss(lg.model, lg.guide, BATCH) - value.item()) > 1e-2


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_value_is_renyi_elbo_at_alpha_zero(objective):
    """With every site in the data plate, RenyiELBO(alpha=0) computes the same per-datapoint sum."""
    lg = LinearGaussian()
    # A given nesting stops RenyiELBO from guessing it by running the guide: the draws then align.
    renyi = pyro.infer.RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(6)
    expected = renyi.loss(lg.model, lg.guide, BATCH)
    pyro.set_rng_seed(6)
    assert objective(5).loss(lg.model, lg.guide, BATCH) == pytest.approx(expected, rel=1e-6)


def test_bound_is_below_log_px_increases_with_k_and_converges():
    lg = LinearGaussian()
    log_px = lg.decoder.log_marginal(X0).item()
    # Replicas of one image: each call gives that many independent bounds (a per-datapoint
    # objective); fewer replicas at large K, whose bounds vary less (sd ~ sqrt(chi2 / K)).
    replicas = {1: 1000, 5: 1000, 50: 500, 500: 100}
    means, errors = {}, {}
    for k, num in replicas.items():
        means[k], errors[k] = bound_per_datapoint(IWAE_ELBO(k), lg, X0.expand(num, 3), num_calls=40)
        assert means[k] <= log_px + 3 * errors[k], (k, means[k], log_px)
    for k, k_next in [(1, 5), (5, 50), (50, 500)]:
        assert means[k_next] - means[k] > 3 * math.hypot(errors[k], errors[k_next]), (k, means, errors)
    # Delta method: log p(x) - E L_K ~= chi2(p(z|x) || q(z|x)) / (2K), chi2 = Var(w) / p(x)^2
    # (~0.68 here). Allow twice that first-order gap (higher-order terms, error of chi2-hat).
    chi2 = (2 * (lg.direct_log_weights(X0, 200_000) - log_px)).exp().mean().item() - 1
    assert log_px - means[500] <= chi2 / 500 + 3 * errors[500], (means[500], log_px, chi2)
    assert log_px - means[1] > 0.3  # the ELBO's gap: the guide is deliberately not the posterior


def test_minibatch_bound_is_the_sum_of_per_datapoint_bounds():
    lg = LinearGaussian()
    iwae, calls, k = IWAE_ELBO(5), 300, 5
    images = BATCH.repeat(2, 1)  # 8 images, each of the 4 in BATCH twice
    batch = torch.tensor([-iwae.loss(lg.model, lg.guide, images) for _ in range(calls)])
    singles = torch.tensor(
        [[-iwae.loss(lg.model, lg.guide, x[None]) for x in BATCH] for _ in range(calls)]
    )  # (calls, 4): one image per call
    sum_of_singles = 2 * singles.mean(0).sum().item()
    se = math.sqrt(batch.var().item() / calls + 4 * singles.var(0).sum().item() / calls)
    assert abs(batch.mean().item() - sum_of_singles) < 3 * se, (batch.mean(), sum_of_singles, se)
    # The batch-joint bound log (1/K) sum_k prod_b w_kb is a different, looser objective (here
    # ~1.6 nats lower, ~9 standard errors): a logsumexp over the whole batch fails the check above.
    joint = torch.stack([lg.direct_log_weights(images, k).sum(1) for _ in range(calls)])  # (calls, K)
    joint = torch.logsumexp(joint, dim=1) - math.log(k)
    joint_se = math.hypot(se, joint.std().item() / math.sqrt(calls))
    assert sum_of_singles - joint.mean().item() > 5 * joint_se, (sum_of_singles, joint.mean(), joint_se)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_global_latent_is_refused(objective):
    def model(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(g, 1.0).expand([x.shape[0], 3]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("g", dist.Normal(pyro.param("g_loc", torch.tensor(0.0)), 1.0))

    with pytest.raises(ModelStructureError, match="'g'"):
        objective(5).differentiable_loss(model, guide, BATCH)
    with pytest.raises(ModelStructureError, match="'g'"):
        objective(5).loss(model, guide, BATCH)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_non_reparameterized_latent_is_refused(objective):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).expand(z.shape + (3,)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("logit", torch.zeros(x.shape[0]))))

    with pytest.raises(ConfigError, match="reparameterizable.*'z'.*Bernoulli"):
        objective(1).differentiable_loss(model, guide, BATCH)


@pytest.mark.parametrize("num_particles", [1, 5])
def test_dreg_has_the_iwae_value_and_theta_gradient(num_particles):
    lg = LinearGaussian()
    params = lg.theta + lg.phi
    (value, grads), (dreg_value, dreg_grads) = same_draws(
        (IWAE_ELBO(num_particles), lg), (IWAE_DReG_ELBO(num_particles), lg), params=params, seed=3
    )
    assert torch.allclose(value, dreg_value, rtol=1e-6)
    for g, h in zip(grads[: len(lg.theta)], dreg_grads[: len(lg.theta)]):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-6)
    # phi: another estimator (no score term) of the same expectation; see the next test.
    assert not torch.allclose(grads[-1], dreg_grads[-1], rtol=1e-2)


class _StickingTheLanding(IWAE_ELBO):
    """IWAE with detached log q but no w~^2 hook: a biased phi gradient for K > 1 (a control)."""

    _guide_log_prob = IWAE_DReG_ELBO._guide_log_prob


def test_dreg_gradient_is_unbiased_with_lower_guide_variance():
    lg = LinearGaussian()
    params = lg.phi + lg.theta
    num_phi = sum(p.numel() for p in lg.phi)
    replicas, calls = X0.expand(10, 3), 300

    def gradients(objective):  # (calls, num_params): each row sums 10 independent gradients
        rows = [loss_and_grads(objective, lg, replicas, params)[1] for _ in range(calls)]
        return torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])

    iwae, dreg, stl = (
        gradients(objective(50)) for objective in (IWAE_ELBO, IWAE_DReG_ELBO, _StickingTheLanding)
    )

    def z_scores(a, b):
        return (a.mean(0) - b.mean(0)) / ((a.var(0) + b.var(0)) / calls).sqrt()

    assert z_scores(iwae, dreg).abs().max() < 4  # theta and phi, 16 (correlated) comparisons
    assert z_scores(iwae, stl)[:num_phi].abs().max() > 10  # the same check catches a w~ (not w~^2) hook
    # The IWAE phi gradient has a score term whose variance does not shrink with K; DReG's does.
    assert dreg[:, :num_phi].var(0).sum() < 0.1 * iwae[:, :num_phi].var(0).sum()


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("num_particles", [1, 5])
def test_nested_plates_match_the_flat_model(objective, num_particles):
    """Data plate at dim -2 plus an inner plate: the same draws give the same value and gradients."""
    flat = LinearGaussian()
    nested = NestedLinearGaussian()
    nested.decoder, nested.encoder = flat.decoder, flat.encoder
    params = flat.theta + flat.phi
    (value, grads), (nested_value, nested_grads) = same_draws(
        (objective(num_particles), flat), (objective(num_particles), nested), params=params, seed=4
    )
    assert torch.allclose(value, nested_value, rtol=1e-5)
    for g, h in zip(grads, nested_grads):
        assert torch.allclose(g, h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_and_grads_back_propagates_the_differentiable_loss(objective):
    lg = LinearGaussian()
    params = lg.theta + lg.phi
    pyro.set_rng_seed(5)
    value, grads = loss_and_grads(objective(5), lg, BATCH, params)
    pyro.set_rng_seed(5)
    assert objective(5).loss_and_grads(lg.model, lg.guide, BATCH) == pytest.approx(value.item(), rel=1e-6)
    for p, g in zip(params, grads):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6)


def test_dreg_refuses_a_flow_guide():
    lg = LinearGaussian()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1)
            shift = pyro.param("shift", torch.zeros(2))
            flow = dist.transforms.AffineTransform(shift, 2.0, event_dim=1)
            pyro.sample("z", dist.TransformedDistribution(base, [flow]))

    with pytest.raises(ConfigError, match="TransformedDistribution.*--objective iwae"):
        IWAE_DReG_ELBO(5).differentiable_loss(lg.model, guide, BATCH)
    assert math.isfinite(IWAE_ELBO(5).loss(lg.model, guide, BATCH))


def test_dreg_refuses_a_hierarchical_guide():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal(z2.unsqueeze(-1), 1.0).expand(z2.shape + (3,)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(pyro.param("loc", torch.zeros(x.shape[0])), 1.0))
            pyro.sample("z2", dist.Normal(z1, 1.0))  # z2's distribution depends on z1

    with pytest.raises(ConfigError, match="--objective iwae"):
        IWAE_DReG_ELBO(5).differentiable_loss(model, guide, BATCH)
    assert IWAE_ELBO(5).differentiable_loss(model, guide, BATCH).requires_grad


def _distributions(p):
    loc, scale = p[:2], p[2:4].exp()
    return [
        dist.Normal(loc, scale),
        dist.Normal(loc, scale).to_event(1),
        dist.MultivariateNormal(loc, scale_tril=torch.diag(scale)),
        dist.LowRankMultivariateNormal(loc, scale[:, None], scale),
        dist.Gamma(scale, scale + 1.0),  # generic: parameters stored as attributes
        dist.Beta(scale, scale + 1.0),  # generic: parameters held by an inner Dirichlet
        ExpandedDistribution(dist.Normal(loc, scale), torch.Size([3, 2])),  # generic, shape data
        dist.Normal(loc, scale).mask(torch.tensor([True, False])),  # generic, mask tensor
    ]


@pytest.mark.parametrize("index", range(8))
def test_detach_parameters_keeps_the_density_and_cuts_the_gradient(index):
    p = torch.tensor([0.3, -0.2, 0.1, -0.4], requires_grad=True)
    fn = _distributions(p)[index]
    value = fn.sample() if not fn.has_rsample else fn.rsample().detach().requires_grad_()
    detached = detach_parameters(fn)
    assert type(detached) is type(fn)
    assert torch.allclose(detached.log_prob(value), fn.log_prob(value))
    assert fn.log_prob(value).requires_grad and not detached.log_prob(value.detach()).requires_grad
    assert detached.log_prob(value).requires_grad  # still a function of the value


def test_detach_parameters_refuses_a_transformed_distribution():
    flow = dist.TransformedDistribution(dist.Normal(0.0, 1.0), [dist.transforms.ExpTransform()])
    with pytest.raises(ConfigError, match="TransformedDistribution"):
        detach_parameters(flow)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
def test_compiled_iwae_agrees_with_the_eager_objective_and_compiles_once(small_train_images):
    """jit-iwae: the same value and gradients as iwae under the same seed, one compiled trace."""
    from pyro_vae import VAEConfig, build_vae
    from pyro_vae.builders import build_objective
    from pyro_vae.data import binarize
    from pyro_vae.distributed import ObjectiveModule

    vae = build_vae(VAEConfig(z_dim=3, hidden_sizes=(32,)))
    x = binarize(small_train_images[:16], torch.Generator().manual_seed(0))
    compiled = build_objective("jit-iwae", num_particles=4)
    module = ObjectiveModule(vae, compiled)
    for _ in range(3):
        module(x)
    (entry,) = compiled._compiled.values()
    assert len(entry.compiled) == 1
    results = {}
    for name, objective in (("jit", module), ("eager", ObjectiveModule(vae, build_objective("iwae", 4)))):
        pyro.set_rng_seed(7)
        vae.zero_grad()
        loss = objective(x)
        loss.backward()
        results[name] = (float(loss.detach()), [p.grad.clone() for p in vae.parameters()])
    assert results["jit"][0] == pytest.approx(results["eager"][0], rel=1e-5)
    for a, b in zip(results["jit"][1], results["eager"][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
