"""Evaluate a trained model on a whole split: per-image ELBO, log p-hat(x) and diagnostics.

The data are processed in batches of images; for each batch :func:`~pyro_vae.estimators.log_weight_terms`
draws K particles per image (in memory-bounded chunks), and only the per-image summaries are
kept, so the full test split at K = 5000 needs memory for one batch, not for 50 million weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from . import estimators
from .estimators import KHAT_THRESHOLD, ImportanceSamplingSummary

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
        "log_likelihood_se_images": float(log_lik.std() / math.sqrt(num)) if num > 1 else float("nan"),
        "elbo_se_images": float(summary.elbo.double().std() / math.sqrt(num)) if num > 1 else float("nan"),
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
