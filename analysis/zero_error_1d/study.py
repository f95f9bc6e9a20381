"""One ground truth at every sigma: the table of the study."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .construction import kl_expansion
from .ground_truths import Gaussian1D, GroundTruth1D
from .quadrature import (
    fit_power_law,
    gaussian_closed_form,
    kl_constructive,
    kl_moment_matched,
    log_p_sigma_by_convolution,
    standardized_posterior,
    total_variation,
)
from .settings import CURVATURE_X_LEVELS, DEFAULT_NUM_POINTS, DEFAULT_X_LEVELS


def default_xs(truth: GroundTruth1D, levels: Sequence[float] = DEFAULT_X_LEVELS) -> np.ndarray:
    """X at the given quantile levels of the ground truth (the bulk, where data lie)."""
    return truth.icdf(np.asarray(levels, dtype=np.float64))


def zero_error_table(
    truth: GroundTruth1D,
    xs: np.ndarray,
    sigmas: np.ndarray,
    *,
    num_points: int = DEFAULT_NUM_POINTS,
) -> dict[str, np.ndarray]:
    r"""Every number of Appendix A for one ground truth on a grid of sigma (rows) and X (columns).

    Returns arrays ``(S, X)``: ``kl`` (constructive Q_sigma), ``kl_moment_matched``,
    ``log_p_sigma``, ``elbo`` = log P_sigma(X) - KL (Eq. 16), and the quadrature checks
    ``kl_doubling_error`` / ``log_p_doubling_error`` (|value with N points - value with 2N|) and
    ``log_p_convolution_error`` (|z0 quadrature - Gauss-Hermite convolution|); ``log_p_gt``
    ``(X,)``.
    """
    xs = np.asarray(xs, dtype=np.float64)
    post = standardized_posterior(truth, xs, sigmas, num_points=num_points)
    kl = kl_constructive(post)
    fine = standardized_posterior(truth, xs, sigmas, num_points=2 * num_points)
    return {
        "kl": kl,
        "kl_moment_matched": kl_moment_matched(post),
        "log_p_sigma": post.log_p_sigma,
        "log_p_gt": truth.log_pdf(xs),
        "elbo": post.log_p_sigma - kl,
        "kl_doubling_error": np.abs(kl_constructive(fine) - kl),
        "log_p_doubling_error": np.abs(fine.log_p_sigma - post.log_p_sigma),
        "log_p_convolution_error": np.abs(log_p_sigma_by_convolution(truth, xs, sigmas) - post.log_p_sigma),
    }


def _max_abs(values: np.ndarray) -> float:
    return float(np.max(np.abs(values)))


def study_ground_truth(
    truth: GroundTruth1D,
    *,
    sigmas: np.ndarray,
    xs: np.ndarray | None = None,
    num_points: int = DEFAULT_NUM_POINTS,
    curvature_sigma: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The table, the slope fits, the curvature link and TV for one ground truth.

    Returns ``(results, arrays)``: JSON-ready numbers, and arrays the figures need (densities
    on an x grid).
    """
    started = time.perf_counter()
    sigmas = np.asarray(sigmas, dtype=np.float64)
    xs = default_xs(truth) if xs is None else np.asarray(xs, dtype=np.float64)
    table = zero_error_table(truth, xs, sigmas, num_points=num_points)
    kl, log_p_sigma, log_p_gt = table["kl"], table["log_p_sigma"], table["log_p_gt"]
    kl_mean = kl.mean(axis=1)
    slope, slope_stderr, intercept = fit_power_law(sigmas, kl_mean)
    per_x = [fit_power_law(sigmas, kl[:, j])[0] for j in range(xs.size)]
    log_p_error = np.abs(log_p_sigma - log_p_gt).max(axis=1)
    densities = total_variation(truth, sigmas)
    tv = densities["tv"]
    small = sigmas <= np.sort(sigmas)[min(2, sigmas.size - 1)]  # the three smallest sigmas

    # The curvature link (Eq. 21) at one sigma, on a denser X grid.
    if curvature_sigma is None:  # the leading-order prediction is best checked at the smallest sigma
        curvature_sigma = float(sigmas.min())
    curvature_xs = default_xs(truth, CURVATURE_X_LEVELS)
    dense = standardized_posterior(truth, curvature_xs, np.array([curvature_sigma]), num_points=num_points)
    expansion = kl_expansion(truth, curvature_xs)
    kl_dense = kl_constructive(dense)[0] / curvature_sigma**2
    mm_dense = kl_moment_matched(dense)[0] / curvature_sigma**2
    predicted = expansion["kl_over_sigma2"]
    seconds = time.perf_counter() - started

    results: dict[str, Any] = {
        "ground_truth": truth.describe(),
        "sigmas": sigmas.tolist(),
        "xs": xs.tolist(),
        "kl": kl.tolist(),
        "kl_moment_matched": table["kl_moment_matched"].tolist(),
        "log_p_sigma": log_p_sigma.tolist(),
        "log_p_gt": log_p_gt.tolist(),
        "elbo": table["elbo"].tolist(),
        "kl_mean": kl_mean.tolist(),
        "kl_moment_matched_mean": table["kl_moment_matched"].mean(axis=1).tolist(),
        "kl_max": kl.max(axis=1).tolist(),
        "slope": slope,
        "slope_stderr": slope_stderr,
        "slope_intercept": intercept,
        "slope_small_sigma": fit_power_law(sigmas[small], kl_mean[small])[0] if small.sum() >= 2 else None,
        "slope_per_x": per_x,
        "slope_per_x_range": [float(np.min(per_x)), float(np.max(per_x))],
        "max_abs_log_p_error": log_p_error.tolist(),
        "log_p_error_slope": fit_power_law(sigmas, log_p_error)[0],
        "total_variation": tv.tolist(),
        "total_variation_slope": fit_power_law(sigmas, tv)[0],
        "quadrature": {
            "num_points": int(num_points),
            "max_abs_kl_doubling_error": _max_abs(table["kl_doubling_error"]),
            "max_rel_kl_doubling_error": float(np.max(table["kl_doubling_error"] / kl)),
            "max_abs_log_p_doubling_error": _max_abs(table["log_p_doubling_error"]),
            "max_abs_log_p_vs_convolution": _max_abs(table["log_p_convolution_error"]),
            "tv_num_x": int(densities["x"].size),
        },
        "curvature": {
            "sigma": curvature_sigma,
            "xs": curvature_xs.tolist(),
            "kl_over_sigma2": kl_dense.tolist(),
            "predicted_kl_over_sigma2": predicted.tolist(),
            "kl_moment_matched_over_sigma2": mm_dense.tolist(),
            "predicted_moment_matched_over_sigma2": expansion["moment_matched_over_sigma2"].tolist(),
            "g_second_over_g_prime": expansion["g_second_over_g_prime"].tolist(),
            "curvature_term": expansion["curvature_term"].tolist(),
            "prior_term": expansion["prior_term"].tolist(),
            "max_rel_error_of_prediction": float(np.max(np.abs(kl_dense / predicted - 1))),
            "correlation_kl_vs_curvature": float(
                np.corrcoef(kl_dense, np.abs(expansion["g_second_over_g_prime"]))[0, 1]
            ),
            "correlation_moment_matched_vs_curvature": float(
                np.corrcoef(mm_dense, expansion["g_second_over_g_prime"] ** 2)[0, 1]
            ),
        },
        "seconds": seconds,
    }
    arrays = {"tv": densities, "xs": xs, "table": table}
    return results, arrays


def closed_form_check(xs: np.ndarray | None, sigmas: np.ndarray, *, num_points: int) -> dict[str, Any]:
    """The quadrature against the exact answers for P_gt = N(0.5, 0.8^2) (written into the JSON)."""
    gaussian = Gaussian1D(0.5, 0.8)
    xs = default_xs(gaussian) if xs is None else np.asarray(xs, dtype=np.float64)
    exact = gaussian_closed_form(gaussian.loc, gaussian.scale, xs, sigmas)
    table = zero_error_table(gaussian, xs, sigmas, num_points=num_points)
    tv = total_variation(gaussian, sigmas)["tv"]
    return {
        "ground_truth": gaussian.describe(),
        "max_abs_kl_error": _max_abs(table["kl"] - exact["kl"]),
        "max_rel_kl_error": float(np.max(np.abs(table["kl"] / exact["kl"] - 1))),
        "max_abs_log_p_sigma_error": _max_abs(table["log_p_sigma"] - exact["log_p_sigma"]),
        "max_rel_tv_error": float(np.max(np.abs(tv / exact["tv"] - 1))),
    }
