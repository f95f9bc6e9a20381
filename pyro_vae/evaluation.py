"""Evaluate a trained model on a whole split: per-image ELBO, log p-hat(x) and diagnostics.

The data are processed in batches of images; for each batch :func:`~pyro_vae.estimators.log_weight_terms`
draws K particles per image (in memory-bounded chunks), and only the per-image summaries are
kept, so the full test split at K = 5000 needs memory for one batch, not for 50 million weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as dist_utils
from . import estimators
from .errors import ConfigError
from .estimators import KHAT_THRESHOLD, ImportanceSamplingSummary
from .guides import guide_mean

NATS_PER_BIT = math.log(2.0)


def evaluate_importance_sampling(
    model: torch.nn.Module,
    data: Sequence[torch.Tensor],
    *,
    num_samples: int,
    batch_size: int = 100,
    chunk_size: int | None = None,
    compute_khat: bool = True,
    progress: bool = True,
) -> ImportanceSamplingSummary:
    """Per-datapoint importance-sampling summary of ``model.model`` / ``model.guide`` on ``data``.

    Parameters
    ----------
    model : nn.Module
        Has Pyro programs ``model(*batch)`` and ``guide(*batch)`` with a ``"data"`` plate.
    data : sequence of tensors
        Indexed along dim 0, already in the form the model scores (e.g. a fixed binarization).
    num_samples : int
        K particles per datapoint.
    batch_size, chunk_size : int
        Datapoints per batch; particles per vectorized pass (see :func:`~pyro_vae.estimators.log_weights`).
    compute_khat : bool
        Also fit PSIS k-hat per datapoint (about 0.3 ms per image at K = 5000).
    """
    was_training = model.training
    model.eval()
    num = data[0].shape[0]
    parts = []
    with tqdm(
        total=num, desc=f"K={num_samples}", unit="image", disable=None if progress else True, leave=False
    ) as bar:
        for start in range(0, num, batch_size):
            batch = tuple(t[start : start + batch_size] for t in data)
            terms = estimators.log_weight_terms(
                model.model, model.guide, *batch, num_samples=num_samples, chunk_size=chunk_size
            )
            parts.append(estimators.summarize_log_weights(terms, compute_khat=compute_khat))
            bar.update(batch[0].shape[0])
    model.train(was_training)
    return ImportanceSamplingSummary(
        **{
            field: torch.cat([getattr(p, field) for p in parts])
            for field in ImportanceSamplingSummary.__dataclass_fields__
        }
    )


def mean_se(values: Sequence[float] | torch.Tensor) -> dict[str, float]:
    """Mean of per-image values and its standard error sd / sqrt(N) (ddof 1; NaN for one value).

    The one place the project computes "mean +- se over images"; the studies report it as
    ``{"mean": ..., "se": ...}``.
    """
    values = torch.as_tensor(values).double().flatten().cpu()
    num = values.numel()
    se = float(values.std() / math.sqrt(num)) if num > 1 else float("nan")
    return {"mean": float(values.mean()), "se": se}


def split_report(summary: ImportanceSamplingSummary, *, num_samples: int) -> dict[str, Any]:
    """Split-level numbers (nats per image, averaged over images) for ``eval.json``.

    ``log_likelihood_se`` is the Monte Carlo standard error of the split mean,
    sqrt(sum_i se_i^2) / N, the error of the estimate for *these* images; ``log_likelihood_se_images``
    is the spread over images, std / sqrt(N), the error as an estimate of the population mean.
    The IS estimate is biased low (the IWAE bound); its bias shrinks as K grows and is not in
    either standard error.
    """
    num = summary.elbo.shape[0]
    log_lik = summary.log_likelihood.double()
    mc_se = float(summary.log_likelihood_se.double().nan_to_num(0.0).pow(2).sum().sqrt() / num)
    report = {
        "elbo": float(summary.elbo.double().mean()),
        "log_likelihood": float(log_lik.mean()),
        "log_likelihood_se": mc_se,
        "log_likelihood_se_images": mean_se(log_lik)["se"],
        "elbo_se_images": mean_se(summary.elbo)["se"],
        "gap": float(summary.gap.double().mean()),
        "num_samples": num_samples,
        "num_images": num,
        "ess_fraction": float(summary.ess.double().mean() / num_samples),
        "khat_over_0_7": float((summary.khat > KHAT_THRESHOLD).double().mean()),
        "khat_max": float(summary.khat.double().max()),
        "rate": float(summary.rate.double().mean()),
        "distortion": float(summary.distortion.double().mean()),
    }
    report["rate_bits"] = report["rate"] / NATS_PER_BIT
    report["distortion_bits"] = report["distortion"] / NATS_PER_BIT
    return report


# ---------------------------------------------------------------------------------------------
# Latent-space diagnostics: which units carry information, and what each one costs in KL.
# ---------------------------------------------------------------------------------------------

#: Burda, Grosse & Salakhutdinov (2016, section 5.2): unit u is *active* when
#: Cov_x(E_{q(z|x)}[z_u]) exceeds this value (for a N(0, I) prior).
ACTIVITY_THRESHOLD = 0.01


@dataclass(frozen=True)
class LatentStatistics:
    """Per-unit and per-datapoint numbers of an encoder on a data set.

    Attributes
    ----------
    activity : ``(z_dim,)`` float64, A_u = Var_x(E_q[z_u]), the spread of the posterior means.
    kl_per_unit : ``(z_dim,)`` float64, the mean over datapoints of KL(q(z_u|x) || p(z_u)).
    kl_per_datapoint : ``(N,)`` float64, KL(Q(z|x) || P(z)) summed over units: the rate.
    """

    activity: torch.Tensor
    kl_per_unit: torch.Tensor
    kl_per_datapoint: torch.Tensor

    def active(self, threshold: float = ACTIVITY_THRESHOLD) -> torch.Tensor:
        """Boolean ``(z_dim,)`` mask of the units with A_u > ``threshold``."""
        return self.activity > threshold

    def num_active(self, threshold: float = ACTIVITY_THRESHOLD) -> int:
        return int(self.active(threshold).sum())

    def kl_of_inactive_units(self, threshold: float = ACTIVITY_THRESHOLD) -> float:
        """Mean KL (nats per datapoint) of the units with A_u <= ``threshold``.

        Such a unit's posterior mean barely moves with x, so its KL is mostly a posterior that
        has not matched the prior: waste. Many of them together can still carry a code spread
        too thinly for a per-unit criterion to see (10,000 units at 0.002 nats each), so read
        this number as an upper bound on the waste, not as the waste itself.
        """
        return float(self.kl_per_unit[~self.active(threshold)].sum())


def _diagonal_normal(distribution: torch.distributions.Distribution) -> torch.distributions.Normal | None:
    """The ``Normal`` inside ``Normal(...).to_event(1)``, or ``None`` for any other family."""
    base = getattr(distribution, "base_dist", distribution)
    if isinstance(distribution, torch.distributions.TransformedDistribution):
        return None
    return base if isinstance(base, torch.distributions.Normal) else None


def _kl_terms(posterior, prior, *, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kl per unit (B, z_dim), kl per datapoint (B,))`` in float64 for one batch of Q(z|x).

    Diagonal Gaussian Q and prior: Eq. 7 unit by unit, the units' sum per datapoint. A
    full-covariance Q: the joint KL in closed form, and per unit the KL of Q's marginal (the units
    are correlated, so the marginal KLs need not add up to the joint one). A flow: the joint KL
    by Monte Carlo, E_q[log q(z|x) - log p(z)] over ``num_samples`` draws; per unit NaN (its
    marginals have no closed form).
    """
    prior_normal = _diagonal_normal(prior)
    if prior_normal is None:
        raise ConfigError(f"latent statistics need a diagonal Gaussian prior, got {type(prior).__name__}")
    prior_normal = torch.distributions.Normal(prior_normal.loc.double(), prior_normal.scale.double())
    q = _diagonal_normal(posterior)
    if q is not None:
        per_unit = torch.distributions.kl_divergence(
            torch.distributions.Normal(q.loc.double(), q.scale.double()), prior_normal
        )
        return per_unit, per_unit.sum(-1)
    if isinstance(posterior, torch.distributions.MultivariateNormal):
        scale_tril = posterior.scale_tril.double()
        marginal = torch.distributions.Normal(posterior.loc.double(), scale_tril.pow(2).sum(-1).sqrt())
        prior_tril = torch.diag(prior_normal.scale)
        joint = torch.distributions.kl_divergence(
            torch.distributions.MultivariateNormal(posterior.loc.double(), scale_tril=scale_tril),
            torch.distributions.MultivariateNormal(prior_normal.loc, scale_tril=prior_tril),
        )
        return torch.distributions.kl_divergence(marginal, prior_normal), joint
    z = posterior.sample((num_samples,))
    joint = (posterior.log_prob(z).double() - prior_normal.log_prob(z.double()).sum(-1)).mean(0)
    return torch.full(z.shape[1:], float("nan"), dtype=torch.float64, device=z.device), joint


@torch.no_grad()
def latent_statistics(
    model: torch.nn.Module, data: torch.Tensor, *, batch_size: int = 500, num_samples: int = 64
) -> LatentStatistics:
    r"""Activity and KL of every latent unit of a VAE with a Gaussian prior, for any guide family.

    .. math::  A_u = \mathrm{Cov}_x\big(E_{q(z|x)}[z_u]\big),

    .. math::  KL_u(x) = \log\frac{s_p}{s_u(x)} + \frac{s_u(x)^2 + (\mu_u(x) - m_p)^2}{2 s_p^2} - \frac12,

    the activity criterion of Burda et al. (2016) and Eq. 7 of the tutorial split per unit. The
    variance is accumulated in float64 over batches (sums of deviations from the first batch's
    mean, so that the cancellation of a naive sum of squares does not occur), so 10,000 images
    of a 10,000-dimensional code need memory for one batch only. The threshold of
    :data:`ACTIVITY_THRESHOLD` is meant for a N(0, I) prior; for N(0, lambda^2 I) compare
    A_u / lambda^2 with it (the criterion is then invariant to the rescaling of section 2.4.3).

    E_q[z] is exact for the Gaussian families and a ``num_samples`` Monte Carlo mean for a flow
    (:func:`~pyro_vae.guides.guide_mean`); the KL terms for the other families are described in
    :func:`_kl_terms`.

    Parameters
    ----------
    model : nn.Module
        Has ``encoder(x)`` returning a distribution over z (any family of :mod:`pyro_vae.guides`)
        and ``prior()`` returning a diagonal Normal over z (the standard or scaled prior).
    data : Tensor
        ``(N, x_dim)`` inputs, as the encoder sees them (binarized for a Bernoulli model).
    """
    was_training = model.training
    model.eval()
    prior = model.prior()
    shift = None
    count = 0
    sum_dev = sum_dev_sq = kl_sum = None
    kl_per_datapoint = []
    for start in range(0, data.shape[0], batch_size):
        posterior = model.encoder(data[start : start + batch_size])
        z_mean = guide_mean(posterior, num_samples=num_samples).double()  # (B, z_dim)
        kl_units, kl_joint = _kl_terms(posterior, prior, num_samples=num_samples)
        if shift is None:
            shift = z_mean.mean(0)
            sum_dev = torch.zeros_like(shift)
            sum_dev_sq = torch.zeros_like(shift)
            kl_sum = torch.zeros_like(shift)
        deviation = z_mean - shift
        sum_dev += deviation.sum(0)
        sum_dev_sq += deviation.pow(2).sum(0)
        kl_sum += kl_units.sum(0)
        kl_per_datapoint.append(kl_joint.cpu())
        count += z_mean.shape[0]
    model.train(was_training)
    if count < 2:
        raise ConfigError("latent statistics need at least 2 datapoints to measure a covariance")
    activity = (sum_dev_sq - sum_dev.pow(2) / count) / (count - 1)
    return LatentStatistics(
        activity=activity.cpu(),
        kl_per_unit=(kl_sum / count).cpu(),
        kl_per_datapoint=torch.cat(kl_per_datapoint),
    )


def evaluate_elbo(
    model: nn.Module,
    data: Sequence[torch.Tensor],
    *,
    batch_size: int = 1000,
    num_samples: int = 1,
    context: dist_utils.DistributedContext | None = None,
) -> float:
    """Mean per-datapoint ELBO (nats) of ``model`` on ``data``, estimated with ``num_samples`` particles.

    In a distributed job each rank scores its shard of ``data`` and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    num = data[0].shape[0]
    rank, world = (context.rank, context.world_size) if context else (0, 1)
    total = torch.zeros((), dtype=torch.float64, device=data[0].device)
    for start in range(rank * batch_size, num, world * batch_size):
        batch = tuple(t[start : start + batch_size] for t in data)
        total += estimators.elbo(model.model, model.guide, *batch, num_samples=num_samples).double().sum()
    if context is not None:
        dist_utils.all_reduce_sum(total)
    model.train(was_training)
    return float(total) / num
