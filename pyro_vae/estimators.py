r"""Per-datapoint importance weights, the ELBO and importance-sampled log p(x) for Pyro programs.

For a model p(x, z) and a guide q(z | x) (any Pyro pair whose datapoints live in a plate named
``"data"``: the VAE, the CVAE, a user's model), draw z_1..z_K ~ q(z | x) and form the log-weights

.. math::  \log w_k = \log p(x, z_k) - \log q(z_k | x),  \qquad k = 1..K.

Then, per datapoint,

- the ELBO estimate is  (1/K) sum_k log w_k  (tutorial Eq. 5, right-hand side);
- the importance-sampled estimate  log p-hat(x) = logsumexp_k(log w_k) - log K  is the IWAE
  bound of Burda, Grosse & Salakhutdinov (2016): E[log p-hat] <= log p(x), non-decreasing in K,
  and -> log p(x) as K -> infinity;
- their difference estimates KL(Q(z|X) || P(z|X)), the gap of Eq. 5.

Particles are vectorized with an outer ``pyro.plate`` (no Python loop over K) and processed in
memory-bounded chunks over K and over the batch, so that K = 5000 fits on a laptop. Pyro's
``vectorized_importance_weights`` sums over the data plate and therefore only gives one number
per batch; here the data dimension is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from .errors import EstimatorMemoryError, ModelStructureError

#: Name of the outer plate that vectorizes the particles.
PARTICLE_PLATE = "_particles"
#: Default number of (particle, datapoint) pairs evaluated in one vectorized pass.
DEFAULT_PAIRS_PER_CHUNK = 20_000


@dataclass(frozen=True)
class ModelStructure:
    """What one trace of a model/guide pair tells about its plates."""

    max_plate_nesting: int
    data_dim: int  # the (negative) batch dimension of the data plate


def inspect_structure(model: Callable, guide: Callable, *args, data_plate: str = "data") -> ModelStructure:
    """Trace ``guide`` and ``model`` once and check that every sample site sits in ``data_plate``.

    Raises
    ------
    ModelStructureError
        If there is no vectorized plate named ``data_plate`` or a sample site lies outside it (a
        global latent variable has no per-datapoint weight), or if the plate subsamples.
    """
    # This probing trace must not consume random numbers: the estimates that follow then use the
    # same draws as any other Pyro estimator run from the same seed (e.g. RenyiELBO).
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda_devices):
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    max_nesting = 0
    data_dims = set()
    for where, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            frames = [f for f in site["cond_indep_stack"] if f.vectorized]
            max_nesting = max([max_nesting, *(-f.dim for f in frames)])
            data_frames = [f for f in frames if f.name == data_plate]
            if not data_frames:
                raise ModelStructureError(
                    f"sample site {name!r} of the {where} is not inside a vectorized "
                    f"pyro.plate({data_plate!r}, ...); per-datapoint estimators need every sample "
                    f"site inside the data plate"
                )
            frame = data_frames[0]
            if frame.full_size is not None and frame.full_size != frame.size:
                raise ModelStructureError(
                    f"pyro.plate({data_plate!r}) subsamples {frame.size} of {frame.full_size} "
                    f"datapoints; estimators need the plate over the full batch they are given"
                )
            data_dims.add(frame.dim)
    if len(data_dims) != 1:
        raise ModelStructureError(f"the {data_plate!r} plate sits at several dims: {sorted(data_dims)}")
    return ModelStructure(max_plate_nesting=max_nesting, data_dim=data_dims.pop())


def _site_log_prob(site: dict, num_dims: int, data_axis: int) -> torch.Tensor:
    """log density of one site, summed over every batch dim except particles (0) and data."""
    log_p = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_p = torch.where(site["mask"], log_p, torch.zeros_like(log_p))
    log_p = log_p.reshape((1,) * (num_dims - log_p.dim()) + tuple(log_p.shape))
    other_axes = [a for a in range(1, num_dims) if a != data_axis]
    if other_axes:
        log_p = log_p.sum(dim=other_axes, keepdim=True)
    return log_p.reshape(log_p.shape[0], log_p.shape[data_axis])


def _chunk_log_weight_terms(
    model, guide, args, num_particles: int, structure: ModelStructure
) -> torch.Tensor:
    """``(3, k, B)``: log p(observed | latents), log p(latents), log q(latents), for k particles."""
    particle_dim = -structure.max_plate_nesting - 1
    num_dims = -particle_dim
    data_axis = num_dims + structure.data_dim
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)

    def scored(trace, observed: bool) -> list[torch.Tensor]:
        return [
            _site_log_prob(site, num_dims, data_axis)
            for site in trace.nodes.values()
            if site["type"] == "sample" and not site_is_subsample(site) and site["is_observed"] == observed
        ]

    groups = [scored(model_trace, True), scored(model_trace, False), scored(guide_trace, False)]
    present = [term for group in groups for term in group]
    if not present:
        raise ModelStructureError("the model and guide have no sample sites to weigh")
    zeros = present[0].new_zeros(num_particles, present[0].shape[1])
    # A model without latent sites (e.g. a regressor) has log p(z) = log q(z) = 0.
    return torch.stack([sum(group, zeros) for group in groups])


def _split_batch(args: tuple, batch_size: int | None) -> Iterator[tuple]:
    """Slice every tensor argument that carries the batch along dim 0 into chunks."""
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0]
    if batch_size is None or not tensors:
        yield args
        return
    num = tensors[0].shape[0]
    for start in range(0, num, batch_size):
        yield tuple(
            a[start : start + batch_size]
            if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == num
            else a
            for a in args
        )


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass(frozen=True)
class LogWeightTerms:
    """The three parts of the log-weights, each ``(K, B)``.

    ``observed`` = log p(x | z_k) (observed sites of the model), ``latent`` = log p(z_k) (latent
    sites of the model), ``guide`` = log q(z_k | x). Their means over K are the *distortion*
    (-E_q log p(x|z)) and *rate* (E_q[log q - log p(z)] = KL(Q(z|X) || P(z)) in expectation) of
    the tutorial's information-theoretic reading (section 2.4.2).
    """

    observed: torch.Tensor
    latent: torch.Tensor
    guide: torch.Tensor

    @property
    def log_weights(self) -> torch.Tensor:
        """log w = log p(x | z) + log p(z) - log q(z | x), ``(K, B)``."""
        return self.observed + self.latent - self.guide


def log_weight_terms(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    data_plate: str = "data",
) -> LogWeightTerms:
    r"""Per-particle, per-datapoint log p(x|z), log p(z) and log q(z|x); see :func:`log_weights`."""
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer (K >= 1), got {num_samples!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    columns = []
    with torch.no_grad():
        for batch_args in _split_batch(args, batch_size):
            structure = inspect_structure(model, guide, *batch_args, data_plate=data_plate)
            num_data = _batch_length(batch_args)
            step = chunk_size or max(1, DEFAULT_PAIRS_PER_CHUNK // max(1, num_data))
            step = min(step, num_samples)
            rows = []
            try:
                for start in range(0, num_samples, step):
                    k = min(step, num_samples - start)
                    rows.append(_chunk_log_weight_terms(model, guide, batch_args, k, structure))
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not _is_out_of_memory(error):
                    raise
                smaller = max(1, step // 4)
                raise EstimatorMemoryError(
                    f"out of memory evaluating {step} particles x {num_data} datapoints at once; "
                    f"use chunk_size={smaller} (--chunk-size {smaller}) or a smaller batch_size"
                ) from None
            columns.append(torch.cat(rows, dim=1))
    terms = torch.cat(columns, dim=2)
    return LogWeightTerms(observed=terms[0], latent=terms[1], guide=terms[2])


def log_weights(model: Callable, guide: Callable, *args, num_samples: int, **options) -> torch.Tensor:
    r"""Log importance weights log p(x, z_k) - log q(z_k | x) of every particle and datapoint.

    Parameters
    ----------
    model, guide : callables
        A Pyro model and guide taking ``*args``, with the datapoints in ``pyro.plate(data_plate)``.
    *args
        Arguments of both; tensors whose first dimension is the batch are split by
        ``batch_size``.
    num_samples : int
        K, the number of particles per datapoint.
    chunk_size : int, optional
        Particles evaluated in one vectorized pass (memory ~ chunk_size x batch). Default:
        about 20,000 (particle, datapoint) pairs per pass.
    batch_size : int, optional
        Datapoints per pass; default: the whole batch at once.
    data_plate : str
        Name of the plate over the datapoints (default ``"data"``).

    Returns
    -------
    Tensor
        ``(K, B)`` log-weights, computed without gradients.

    Raises
    ------
    ModelStructureError
        If a sample site is outside the data plate (no per-datapoint weight exists).
    EstimatorMemoryError
        If a chunk does not fit in memory; the message names a chunk size to use.
    """
    # options: chunk_size, batch_size and data_plate, as documented above
    return log_weight_terms(model, guide, *args, num_samples=num_samples, **options).log_weights


def _batch_length(args: tuple) -> int:
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return a.shape[0]
    return 1


# ---------------------------------------------------------------------------------------------
# Summaries of a (K, B) matrix of log-weights. Pure tensor functions: no Pyro, easy to test.
# ---------------------------------------------------------------------------------------------


def elbo_from_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    """(1/K) sum_k log w_k per datapoint: a Monte Carlo estimate of the ELBO, shape ``(B,)``."""
    return log_w.mean(dim=0)


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log((1/K) sum_k w_k) = logsumexp(log w) - log K per datapoint, shape ``(B,)``."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def block_log_mean_exp(log_w: torch.Tensor, num_samples: int) -> torch.Tensor:
    """IS estimates with ``num_samples`` particles from disjoint blocks of ``log_w``, ``(num_blocks, B)``.

    K_max particles give floor(K_max / k) independent estimates of log p-hat_k; their mean is a
    lower-variance estimate of E[log p-hat_k], the IWAE bound at k, from the same draws that
    give the estimate at K_max.
    """
    total = log_w.shape[0]
    if not 1 <= num_samples <= total:
        raise ValueError(f"num_samples must be between 1 and {total}, got {num_samples}")
    num_blocks = total // num_samples
    blocks = log_w[: num_blocks * num_samples].reshape(num_blocks, num_samples, *log_w.shape[1:])
    return torch.logsumexp(blocks, dim=1) - math.log(num_samples)


def normalized_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Self-normalized weights w_k / sum_j w_j along K (computed stably by a softmax)."""
    return torch.softmax(log_w, dim=0)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size 1 / sum_k w-bar_k^2 per datapoint, in [1, K]."""
    return 1.0 / normalized_weights(log_w).pow(2).sum(dim=0)


def log_mean_exp_standard_error(log_w: torch.Tensor) -> torch.Tensor:
    r"""Monte Carlo standard error of log p-hat = log mean(w), by the delta method.

    se(log p-hat) ~= sd(w) / (sqrt(K) mean(w)). With normalized weights w-bar, the sample
    variance gives  se^2 = (K sum_k w-bar_k^2 - 1) / (K - 1),  computed without overflow.
    NaN for K = 1, where no spread can be measured.
    """
    num = log_w.shape[0]
    if num < 2:
        return torch.full(log_w.shape[1:], float("nan"), dtype=log_w.dtype, device=log_w.device)
    sum_sq = normalized_weights(log_w).pow(2).sum(dim=0)
    return ((num * sum_sq - 1.0).clamp_min(0.0) / (num - 1)).sqrt()


def elbo(model: Callable, guide: Callable, *args, num_samples: int = 1, **options) -> torch.Tensor:
    """Per-datapoint ELBO estimate, ``(B,)``, averaged over ``num_samples`` particles."""
    return elbo_from_log_weights(log_weights(model, guide, *args, num_samples=num_samples, **options))


def log_likelihood(model: Callable, guide: Callable, *args, num_samples: int, **options) -> torch.Tensor:
    """Per-datapoint importance-sampled log p(x) (the IWAE bound with K particles), ``(B,)``."""
    return log_mean_exp(log_weights(model, guide, *args, num_samples=num_samples, **options))


#: Pareto k-hat above which an importance-sampling estimate is unreliable (Vehtari et al., 2024).
KHAT_THRESHOLD = 0.7


def pareto_khat(log_w: torch.Tensor) -> torch.Tensor:
    r"""PSIS Pareto shape k-hat of the importance weights of every datapoint, ``(B,)``.

    Fits a generalized Pareto distribution to the largest weights (Vehtari, Simpson, Gelman, Yao
    & Gabry, 2024, *Pareto smoothed importance sampling*, JMLR 25(72)) through ``arviz.psislw``,
    which takes **log-weights** (not their negatives: LOO passes -log-likelihood because its
    weights are 1/p). k-hat < 0.5: the weights have finite variance and the estimate converges
    well; k-hat > :data:`KHAT_THRESHOLD`: the estimate is unreliable even for large K.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.x announces its 1.x refactor
        import arviz

    log_w64 = log_w.detach().to(torch.float64).cpu().T.contiguous().numpy()  # (B, K): samples last
    with warnings.catch_warnings():
        # arviz warns when k-hat is large or the tail is short; the caller flags those datapoints.
        warnings.simplefilter("ignore", UserWarning)
        _, khat = arviz.psislw(log_w64)
    return torch.as_tensor(khat, dtype=log_w.dtype)


@dataclass(frozen=True)
class ImportanceSamplingSummary:
    """Per-datapoint estimates from one ``(K, B)`` matrix of log-weights; every field is ``(B,)``.

    Attributes
    ----------
    elbo : mean of log w over the K particles.
    log_likelihood : log p-hat(x) = logsumexp(log w) - log K.
    log_likelihood_se : Monte Carlo standard error of log p-hat (delta method).
    ess : Kish effective sample size 1 / sum w-bar^2.
    khat : PSIS Pareto k-hat (NaN where not computed).
    distortion : -mean log p(x | z), when the terms are known (else NaN).
    rate : mean [log q(z | x) - log p(z)], an estimate of KL(Q(z|X) || P(z)) (else NaN).
    """

    elbo: torch.Tensor
    log_likelihood: torch.Tensor
    log_likelihood_se: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    distortion: torch.Tensor
    rate: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """log p-hat(x) - ELBO: the estimate of KL(Q(z|X) || P(z|X)) of Eq. 5."""
        return self.log_likelihood - self.elbo


def summarize_log_weights(
    log_w: torch.Tensor | LogWeightTerms, *, compute_khat: bool = True
) -> ImportanceSamplingSummary:
    """All per-datapoint estimates of :class:`ImportanceSamplingSummary` from one set of weights."""
    terms = log_w if isinstance(log_w, LogWeightTerms) else None
    log_w = terms.log_weights if terms is not None else log_w
    nan = torch.full(log_w.shape[1:], float("nan"), dtype=log_w.dtype, device=log_w.device)
    return ImportanceSamplingSummary(
        elbo=elbo_from_log_weights(log_w),
        log_likelihood=log_mean_exp(log_w),
        log_likelihood_se=log_mean_exp_standard_error(log_w),
        ess=effective_sample_size(log_w),
        khat=pareto_khat(log_w).to(log_w.device) if compute_khat and log_w.shape[0] > 1 else nan,
        distortion=-terms.observed.mean(0) if terms is not None else nan,
        rate=(terms.guide - terms.latent).mean(0) if terms is not None else nan,
    )
