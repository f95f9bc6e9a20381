r"""Training objectives: a fix for Pyro 1.9's compiled mean-field ELBO, and the IWAE bound.

``pyro.infer.JitTraceMeanField_ELBO.differentiable_loss`` (Pyro 1.9.2) tests whether its compiled
loss exists under the attribute ``_loss_and_surrogate_loss`` but stores it as
``_differentiable_loss``, so every call builds and traces a new function: the "JIT" objective
re-traces the model at every step and runs about 3x slower than no JIT at all.
:class:`JitTraceMeanField_ELBO` marks the cache as built, so the loss is traced once; if Pyro
fixes the attribute, the subclass changes nothing.

Pyro's JIT objectives also key their compiled traces on ``id(model)`` and ``id(guide)``: pass the
*same* callables at every step (a bound method such as ``vae.model`` is a new object at every
attribute access). :class:`pyro_vae.distributed.ObjectiveModule` holds them once.

:class:`IWAE_ELBO` and :class:`IWAE_DReG_ELBO` train on the importance-weighted bound
(Burda, Grosse & Salakhutdinov, 2016) of every datapoint x,

.. math::  \mathcal{L}_K(x) = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K w_k\Big],
           \qquad w_k = \frac{p(x, z_k)}{q(z_k | x)},\quad z_k \sim q(z | x),

summed over the minibatch. They reuse ``pyro.infer.RenyiELBO``'s vectorized traces (alpha = 0 is
the IWAE bound) but weigh each datapoint separately, like :mod:`pyro_vae.estimators`, and add
the ``differentiable_loss`` that RenyiELBO lacks in Pyro 1.9.2.
"""

from __future__ import annotations

import copy
import functools
import numbers

import pyro.distributions as dist
import pyro.infer
import pyro.ops.jit
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .errors import ConfigError
from .estimators import ModelStructure, inspect_structure, log_mean_exp, normalized_weights


class JitTraceMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """``pyro.infer.JitTraceMeanField_ELBO`` that compiles its loss once (see the module docstring)."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if getattr(self, "_differentiable_loss", None) is not None:
            # The attribute the parent class checks before rebuilding its compiled loss.
            self._loss_and_surrogate_loss = self._differentiable_loss
        return super().differentiable_loss(model, guide, *args, **kwargs)


def _callable_key(fn) -> tuple:
    # A bound method (``vae.model``) is a new object at every access: key on function and owner.
    return (id(getattr(fn, "__func__", fn)), id(getattr(fn, "__self__", None)))


def _per_datapoint(log_p: torch.Tensor, structure: ModelStructure) -> torch.Tensor:
    """Sum a site's log density over every batch dim except particles and data: ``(K, B)``."""
    num_dims = structure.max_plate_nesting + 1  # plates + the particle plate, outermost
    data_axis = num_dims + structure.data_dim
    # With K = 1 Pyro adds no particle plate: padding on the left restores a particle axis of 1.
    log_p = log_p.reshape((1,) * (num_dims - log_p.dim()) + tuple(log_p.shape))
    other_axes = [a for a in range(1, num_dims) if a != data_axis]
    if other_axes:
        log_p = log_p.sum(dim=other_axes, keepdim=True)
    return log_p.reshape(log_p.shape[0], log_p.shape[data_axis])


def _latent_sites(trace) -> list[dict]:
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


class IWAE_ELBO(pyro.infer.RenyiELBO):  # noqa: N801 (Pyro's naming)
    r"""The importance-weighted bound of Burda, Grosse & Salakhutdinov (2016), per datapoint.

    .. math::  \mathcal{L}_K = \sum_{b=1}^B \Big[\operatorname{logsumexp}_k \log w_{kb} - \log K\Big],
               \qquad \log w_{kb} = \log p(x_b, z_{kb}) - \log q(z_{kb} | x_b).

    :math:`\mathcal{L}_1` is the ELBO; :math:`\mathbb{E}\,\mathcal{L}_K \le \log p(x)` increases
    with K and tends to log p(x). The K particles are vectorized in an outer plate; the
    logsumexp runs over K *inside* the data plate, never over the whole batch (the batch-joint
    bound :math:`\log \frac1K \sum_k \prod_b w_{kb}`, for many datapoints, is barely better than
    the ELBO). The gradient
    is the reparameterized IWAE gradient :math:`\sum_k \tilde w_k \nabla \log w_k`,
    :math:`\tilde w = \mathrm{softmax}_k \log w`.

    Parameters
    ----------
    num_particles : int
        K >= 1, importance samples per datapoint.
    data_plate : str
        Name of the plate over the datapoints.

    Raises
    ------
    ConfigError
        If K < 1, or (at the first call with gradients enabled) a latent site of the guide cannot
        be reparameterized.
    ModelStructureError
        At the first call with a model/guide pair, if a sample site lies outside the data plate:
        RenyiELBO would then silently weigh the whole batch jointly.

    Notes
    -----
    ``pyro.infer.RenyiELBO(alpha=0)`` computes the same value per datapoint when every site is in
    the data plate, but has no ``differentiable_loss`` and ignores score-function terms at
    alpha = 0, so it is used here for its (vectorized, validated) traces only.
    """

    def __init__(self, num_particles: int, *, data_plate: str = "data"):
        name = type(self).__name__
        if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral):
            raise ConfigError(f"{name} needs an integer num_particles K >= 1, got {num_particles!r}")
        if num_particles < 1:
            raise ConfigError(
                f"{name} needs num_particles K >= 1 (samples per datapoint), got {num_particles}"
            )
        super().__init__(alpha=0, num_particles=int(num_particles), vectorize_particles=True)
        self.data_plate = data_plate
        # The first call with a model/guide pair checks its structure and latents (see _log_weights).
        self._structure_key: tuple | None = None
        self._latents_key: tuple | None = None
        self._structure: ModelStructure | None = None

    def _guide_log_prob(self, site: dict) -> torch.Tensor:
        return site["log_prob"]

    def _log_weights(self, model, guide, args, kwargs) -> tuple[torch.Tensor, list[dict]]:
        """log w = log p(x, z) - log q(z | x) per particle and datapoint ``(K, B)``, and the latents."""
        key = (_callable_key(model), _callable_key(guide))
        if key != self._structure_key:
            # inspect_structure traces without consuming random numbers; setting the nesting here
            # also stops Pyro from guessing it by running the guide (which would consume some).
            bound_model, bound_guide = functools.partial(model, **kwargs), functools.partial(guide, **kwargs)
            self._structure = inspect_structure(bound_model, bound_guide, *args, data_plate=self.data_plate)
            self.max_plate_nesting = self._structure.max_plate_nesting + (1 if self.num_particles > 1 else 0)
            self._structure_key = key
        # The parent class's trace: the particle plate, shape checks, log densities with scale/mask.
        model_trace, guide_trace = next(iter(self._get_traces(model, guide, args, kwargs)))
        latents = _latent_sites(guide_trace)
        if key != self._latents_key and torch.is_grad_enabled():
            self._check_latents(latents)  # about gradients only: skipped (and kept due) under no_grad
            self._latents_key = key
        log_w = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                log_w = log_w + _per_datapoint(site["log_prob"], self._structure)  # (K, B)
        for site in latents:
            log_w = log_w - _per_datapoint(self._guide_log_prob(site), self._structure)  # (K, B)
        return log_w, latents

    def _check_latents(self, latents: list[dict]) -> None:
        for site in latents:
            if not site["fn"].has_rsample:
                # Without rsample the gradient needs score-function terms, which are not implemented
                # (RenyiELBO drops them at alpha = 0, a biased gradient).
                raise ConfigError(
                    f"{type(self).__name__} needs reparameterizable latents, but guide site "
                    f"{site['name']!r} is a {type(site['fn']).__name__} without rsample"
                )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-sum_b L_K(x_b), a differentiable scalar (the negated bound, summed over the batch)."""
        log_w, _ = self._log_weights(model, guide, args, kwargs)  # (K, B)
        return -log_mean_exp(log_w).sum()

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """-sum_b L_K(x_b) as a float, without gradients."""
        return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Back-propagate :meth:`differentiable_loss` (for ``pyro.infer.SVI``); return it as a float."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()


class IWAE_DReG_ELBO(IWAE_ELBO):  # noqa: N801 (Pyro's naming)
    r"""The IWAE bound with the doubly-reparameterized gradient of Tucker, Lawson, Gu & Maddison (2019).

    Same value as :class:`IWAE_ELBO`. The model's parameters theta get the IWAE gradient
    :math:`\sum_k \tilde w_k \nabla_\theta \log w_k`; the guide's parameters phi get

    .. math::  \sum_k \tilde w_k^2 \, \frac{\partial \log w_k}{\partial z_k} \frac{d z_k}{d \phi},

    which has the expectation of the IWAE gradient but no score term
    :math:`-\tilde w_k \partial_\phi \log q`, whose variance does not shrink with K (Rainforth
    et al., 2018, "Tighter variational bounds are not necessarily better"). Built as: log q is
    evaluated with the guide distribution's parameters detached (phi then reaches the loss only
    through z), and a hook multiplies the gradient arriving at every latent value z by
    :math:`\tilde w` (detached), turning :math:`\tilde w` into :math:`\tilde w^2` for phi.

    Its parameters, ``num_particles`` and ``data_plate``, are those of :class:`IWAE_ELBO`.

    Raises
    ------
    ConfigError
        If K < 1; at the first call, if a latent is not reparameterizable, if one latent's
        value feeds another's distribution (a hierarchical guide: detaching parameters would also
        cut the path z_1 -> q(z_2 | z_1)), or (at any call) if a guide distribution's parameters
        cannot be detached (e.g. a normalizing flow).
    ModelStructureError
        As :class:`IWAE_ELBO`.
    """

    def _guide_log_prob(self, site: dict) -> torch.Tensor:
        log_q = detach_parameters(site["fn"]).log_prob(site["value"])
        return scale_and_mask(log_q, site["scale"], site["mask"])

    def _check_latents(self, latents: list[dict]) -> None:
        super()._check_latents(latents)
        values = [site["value"] for site in latents if site["value"].requires_grad]
        for i, later in enumerate(values):
            for earlier in values[:i]:
                # Does the graph of a later latent contain an earlier one? (Only on the first call.)
                if (
                    torch.autograd.grad(later.sum(), earlier, retain_graph=True, allow_unused=True)[0]
                    is not None
                ):
                    raise ConfigError(
                        f"{type(self).__name__} supports guides whose latents do not depend on each "
                        f"other; this guide samples one latent from another; use --objective iwae"
                    )

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """-sum_b L_K(x_b), whose gradient is the DReG estimator (see the class docstring)."""
        log_w, latents = self._log_weights(model, guide, args, kwargs)  # (K, B)
        weights = normalized_weights(log_w.detach())  # (K, B): w~, summing to 1 over K
        structure = self._structure
        num_dims = structure.max_plate_nesting + 1
        data_axis = num_dims + structure.data_dim
        for site in latents:
            value = site["value"]
            if not value.requires_grad:  # e.g. under torch.no_grad (loss())
                continue
            # Align w~ with the value's batch dims (particles outermost, data at its plate dim),
            # then broadcast over its event dims.
            shape = [1] * num_dims
            shape[0], shape[data_axis] = weights.shape
            shaped = weights.reshape(shape + [1] * site["fn"].event_dim)
            # With K = 1 there is no particle dim (and outer plates may be absent): drop those 1s.
            shaped = shaped.reshape(shaped.shape[max(0, shaped.dim() - value.dim()) :])
            value.register_hook(functools.partial(torch.mul, shaped))
        return -log_mean_exp(log_w).sum()


class JitIWAE_ELBO(IWAE_ELBO):  # noqa: N801 (Pyro's naming)
    """:class:`IWAE_ELBO` with its loss compiled once per model/guide pair by ``pyro.ops.jit.trace``.

    The same value and gradient as the eager objective, without Pyro's per-step Python work
    (tracing, validation, bookkeeping). Like Pyro's ``JitTrace*_ELBO`` classes it needs a static
    model structure and a fixed batch size (the training loop drops a last, smaller batch), and
    bakes in every Python-side value at compilation, such as a KL weight. The doubly-reparameterized
    estimator registers gradient hooks at every call and therefore has no compiled form.
    """

    def __init__(self, num_particles: int, *, data_plate: str = "data", ignore_jit_warnings: bool = True):
        super().__init__(num_particles, data_plate=data_plate)
        self.ignore_jit_warnings = ignore_jit_warnings
        self._compiled: dict[tuple, object] = {}

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        key = (_callable_key(model), _callable_key(guide))
        if key not in self._compiled:
            eager = super().differentiable_loss

            @pyro.ops.jit.trace(ignore_warnings=self.ignore_jit_warnings)
            def compiled(*args, **kwargs):
                return eager(model, guide, *args, **kwargs)

            self._compiled[key] = compiled
        return self._compiled[key](*args, **kwargs)


def _is_shape_data(value) -> bool:
    """None, a number, a string, or a tuple / dict of those (shapes, sizes): safe to share."""
    if isinstance(value, dict):
        return all(_is_shape_data(k) and _is_shape_data(v) for k, v in value.items())
    if isinstance(value, tuple):
        return all(_is_shape_data(v) for v in value)
    return value is None or isinstance(value, numbers.Number | str)


def detach_parameters(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The same distribution with its parameters detached (stop-gradient), for DReG's log q.

    Rebuilds ``Independent`` (recursively), ``Normal``, ``MultivariateNormal`` (from its
    ``scale_tril``) and ``LowRankMultivariateNormal``. Any other distribution whose state holds
    only tensors (its ``arg_constraints`` parameters and cached values derived from them), inner
    distributions and shape data (e.g. ``Gamma``, ``Beta``, Pyro's expanded and masked
    distributions) is copied with every tensor detached and every inner distribution recursed.

    Raises
    ------
    ConfigError
        For a distribution holding anything else, e.g. a ``TransformedDistribution`` (a flow)
        whose transforms carry parameters.
    """
    if isinstance(fn, torch.distributions.Independent):
        return dist.Independent(detach_parameters(fn.base_dist), fn.reinterpreted_batch_ndims)
    if type(fn) in (dist.Normal, torch.distributions.Normal):
        return dist.Normal(fn.loc.detach(), fn.scale.detach(), validate_args=False)
    if type(fn) in (dist.MultivariateNormal, torch.distributions.MultivariateNormal):
        return dist.MultivariateNormal(
            fn.loc.detach(), scale_tril=fn.scale_tril.detach(), validate_args=False
        )
    if type(fn) in (dist.LowRankMultivariateNormal, torch.distributions.LowRankMultivariateNormal):
        return dist.LowRankMultivariateNormal(
            fn.loc.detach(), fn.cov_factor.detach(), fn.cov_diag.detach(), validate_args=False
        )
    state = vars(fn)
    if not all(
        isinstance(v, torch.Tensor | torch.distributions.Distribution) or _is_shape_data(v)
        for v in state.values()
    ):
        raise ConfigError(
            f"iwae-dreg needs a guide whose distribution parameters can be detached; "
            f"{type(fn).__name__} cannot be; use --objective iwae"
        )
    copied = copy.copy(fn)  # shares the shape data, replaced tensors and distributions below
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            setattr(copied, key, value.detach())
        elif isinstance(value, torch.distributions.Distribution):
            setattr(copied, key, detach_parameters(value))
    return copied


def describe_objective(model, loss, batch: tuple, name: str, kl_warmup: float = 0.0) -> str:
    """One line naming the objective and, for Eq. 10's estimator, how each KL term is computed."""
    text = f"objective {name}"
    if isinstance(loss, pyro.infer.TraceMeanField_ELBO):
        forms = kl_forms(model, *batch)
        text += " (Eq. 10): " + ", ".join(
            f"KL(Q({site}|X) || P({site})) {form}" for site, form in forms.items()
        )
    if kl_warmup > 0:
        text += f"; KL weight rises from 0 to 1 over {kl_warmup:g} epochs"
    return text


def kl_forms(model, *batch: torch.Tensor) -> dict[str, str]:
    """For each latent site: ``"in closed form"`` where ``kl_divergence(q, p)`` exists, else ``"sampled"``.

    ``TraceMeanField_ELBO`` makes the same choice per site (closed form when registered, the
    one-sample estimate log q(z) - log p(z) otherwise, e.g. for a mixture or VampPrior).
    Runs one trace without touching the random number generators.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda):
        guide_trace = poutine.trace(model.guide).get_trace(*batch)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*batch)
    forms = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        try:
            kl_divergence(guide_trace.nodes[name]["fn"], site["fn"])
            forms[name] = "in closed form"
        except NotImplementedError:
            forms[name] = "sampled"
    return forms
