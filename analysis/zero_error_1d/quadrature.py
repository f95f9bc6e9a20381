"""Quadrature in the standardized coordinate z0 of Eq. 17, and the closed forms for a Gaussian
ground truth that the tests hold it to."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import stats
from scipy.special import logsumexp

from .construction import f_decoder, g_encoder, log_g_prime
from .ground_truths import GroundTruth1D
from .settings import DEFAULT_NUM_POINTS, LOG_SQRT_2PI, TAIL_SDS, Z_MAX


@dataclass
class StandardizedPosterior:
    r"""Q^0 and the exact P^0_sigma(z0|X) on a uniform z0 grid per (sigma, X).

    Shapes: grids ``(S, X, N)``, ``log_p_sigma`` ``(S, X)``. ``log_weights`` are the log
    trapezoid weights (h, and h/2 at both ends), so sum(exp(log_weights + log density)) ~ 1.
    """

    sigmas: np.ndarray
    xs: np.ndarray
    z0: np.ndarray
    log_weights: np.ndarray
    log_q0: np.ndarray
    log_posterior0: np.ndarray
    log_p_sigma: np.ndarray

    @property
    def num_points(self) -> int:
        return self.z0.shape[-1]


def standardized_posterior(
    truth: GroundTruth1D,
    xs: np.ndarray,
    sigmas: np.ndarray,
    *,
    num_points: int = DEFAULT_NUM_POINTS,
    tail_sds: float = TAIL_SDS,
) -> StandardizedPosterior:
    r"""Evaluate Q^0(z0|X) and P^0_sigma(z0|X) = P_sigma(z = r | X) sigma on a grid (Eqs. 17-18).

    With r = g(X) + (z0 - g(X)) sigma,

        log P^0_sigma(z0|X) = log N(X | f(r), sigma^2) + log phi(r) + log sigma - log P_sigma(X),
        P_sigma(X) = int N(X | f(r), sigma^2) phi(r) sigma dz0      (trapezoid rule).

    The grid of each (sigma, X) spans, in z, every z whose likelihood is within ``tail_sds``
    noise sds of X, i.e. [g(X - tail sigma), g(X + tail sigma)] (g is increasing, so this is
    exact), clipped to |z| <= Z_MAX, joined with Q^0's g(X) +- tail g'(X). Its local width is
    1/f'(r) = g'(f(r)) in z0 at every sigma, so N points resolve sigma = 0.3 and 0.003 alike.
    The trapezoid rule converges geometrically for such smooth, rapidly decaying integrands.
    """
    xs = np.asarray(xs, dtype=np.float64)
    sigma = np.asarray(sigmas, dtype=np.float64)[:, None]  # (S, 1)
    g = g_encoder(truth, xs)  # (X,)
    log_gp = log_g_prime(truth, xs)
    g_prime = np.exp(log_gp)
    z_low = np.maximum(g_encoder(truth, xs - tail_sds * sigma), -Z_MAX)  # (S, X)
    z_high = np.minimum(g_encoder(truth, xs + tail_sds * sigma), Z_MAX)
    z0_low = np.minimum(g + (z_low - g) / sigma, g - tail_sds * g_prime)
    z0_high = np.maximum(g + (z_high - g) / sigma, g + tail_sds * g_prime)
    fraction = np.linspace(0.0, 1.0, num_points)
    step = (z0_high - z0_low) / (num_points - 1)  # (S, X)
    z0 = z0_low[..., None] + (z0_high - z0_low)[..., None] * fraction  # (S, X, N)
    log_weights = np.broadcast_to(np.log(step)[..., None], z0.shape).copy()
    log_weights[..., [0, -1]] += math.log(0.5)

    sigma_grid = sigma[..., None]  # (S, 1, 1)
    r = g[:, None] + (z0 - g[:, None]) * sigma_grid
    residual = (xs[:, None] - f_decoder(truth, r)) / sigma_grid
    log_joint = (-0.5 * residual**2 - LOG_SQRT_2PI - np.log(sigma_grid)) + (-0.5 * r**2 - LOG_SQRT_2PI)
    log_joint0 = log_joint + np.log(sigma_grid)  # Jacobian dz = sigma dz0
    log_p_sigma = logsumexp(log_joint0 + log_weights, axis=-1)  # (S, X)
    log_q0 = -0.5 * ((z0 - g[:, None]) / g_prime[:, None]) ** 2 - LOG_SQRT_2PI - log_gp[:, None]
    return StandardizedPosterior(
        sigmas=np.asarray(sigmas, dtype=np.float64),
        xs=xs,
        z0=z0,
        log_weights=log_weights,
        log_q0=log_q0,
        log_posterior0=log_joint0 - log_p_sigma[..., None],
        log_p_sigma=log_p_sigma,
    )


def _expectation(post: StandardizedPosterior, log_density: np.ndarray, values: np.ndarray) -> np.ndarray:
    """int density(z0) values(z0) dz0 by the trapezoid rule of ``post``'s grid, ``(S, X)``."""
    return np.sum(np.exp(post.log_weights + log_density) * values, axis=-1)


def kl_constructive(post: StandardizedPosterior) -> np.ndarray:
    r"""KL(Q_sigma(z|X) || P_sigma(z|X)) = KL(Q^0 || P^0_sigma) (Eq. 17; KL is affine-invariant).

    = int Q^0(z0) [log Q^0(z0) - log P^0_sigma(z0)] dz0, ``(S, X)``.
    """
    return _expectation(post, post.log_q0, post.log_q0 - post.log_posterior0)


def kl_moment_matched(post: StandardizedPosterior) -> np.ndarray:
    r"""KL(N(m, v) || P_sigma(z|X)) for the Gaussian with the exact posterior's mean and variance.

    An upper bound on the best Gaussian's KL(q || P(z|X)); to leading order in sigma it equals it
    (both remove the parts of the log-ratio along Delta and Delta^2, see :func:`kl_expansion`).
    """
    mean = _expectation(post, post.log_posterior0, post.z0)
    variance = _expectation(post, post.log_posterior0, (post.z0 - mean[..., None]) ** 2)
    log_q = (
        -0.5 * (post.z0 - mean[..., None]) ** 2 / variance[..., None]
        - LOG_SQRT_2PI
        - 0.5 * np.log(variance)[..., None]
    )
    return _expectation(post, log_q, log_q - post.log_posterior0)


def log_p_sigma_by_convolution(
    truth: GroundTruth1D, xs: np.ndarray, sigmas: np.ndarray, *, num_nodes: int = 96
) -> np.ndarray:
    r"""log P_sigma(X) = log E_{u ~ N(0,1)} [p_gt(X - sigma u)], by Gauss-Hermite, ``(S, X)``.

    Since f(z) ~ P_gt for z ~ N(0, 1), P_sigma = P_gt * N(0, sigma^2) (a convolution); this
    route needs neither f nor g and cross-checks the z0 quadrature.
    """
    nodes, weights = hermegauss(num_nodes)  # weight exp(-u^2 / 2)
    log_weights = np.log(weights) - LOG_SQRT_2PI
    sigma = np.asarray(sigmas, dtype=np.float64)[:, None, None]
    shifted = np.asarray(xs, dtype=np.float64)[None, :, None] - sigma * nodes  # (S, X, n)
    return logsumexp(truth.log_pdf(shifted) + log_weights, axis=-1)


def total_variation(
    truth: GroundTruth1D, sigmas: np.ndarray, *, num_x: int = 8001, tail_level: float = 1e-12
) -> dict[str, np.ndarray]:
    r"""TV(P_sigma, P_gt) = (1/2) int |P_sigma(x) - P_gt(x)| dx on a wide uniform x grid.

    The grid spans [F^{-1}(tail_level) - TAIL_SDS max sigma, F^{-1}(1 - tail_level) + TAIL_SDS
    max sigma]; P_sigma comes from :func:`log_p_sigma_by_convolution`. Returns the grid, both
    densities (for the figure) and ``tv`` ``(S,)``.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    low, high = (
        truth.icdf_log(np.log(tail_level), np.log1p(-tail_level)),
        truth.icdf_log(np.log1p(-tail_level), np.log(tail_level)),
    )
    x = np.linspace(low - TAIL_SDS * sigmas.max(), high + TAIL_SDS * sigmas.max(), num_x)
    p_sigma = np.exp(log_p_sigma_by_convolution(truth, x, sigmas))  # (S, num_x)
    p_gt = np.exp(truth.log_pdf(x))
    tv = 0.5 * np.trapezoid(np.abs(p_sigma - p_gt), x, axis=-1)
    return {"x": x, "p_sigma": p_sigma, "p_gt": p_gt, "tv": tv}


def fit_power_law(sigmas: np.ndarray, values: np.ndarray) -> tuple[float, float, float]:
    r"""Least-squares fit log value = intercept + slope log sigma; returns (slope, stderr, intercept).

    stderr = sqrt(RSS / (n - 2) / sum (log sigma - mean)^2), the regression's standard error of
    the slope (NaN with two points). It measures how far the points are from a straight line:
    the O(sigma^3) corrections to KL ~ sigma^2 show up in it.
    """
    log_s, log_v = np.log(np.asarray(sigmas, np.float64)), np.log(np.asarray(values, np.float64))
    fit = stats.linregress(log_s, log_v)
    stderr = float(fit.stderr) if log_s.size > 2 else float("nan")  # linregress gives 0 for two points
    return float(fit.slope), stderr, float(fit.intercept)


def gaussian_closed_form(
    loc: float, scale: float, xs: np.ndarray, sigmas: np.ndarray
) -> dict[str, np.ndarray]:
    r"""Exact KL, log P_sigma(X) and TV for P_gt = N(loc, scale^2), ``(S, X)`` (TV: ``(S,)``).

    f(z) = loc + scale z and g(x) = (x - loc) / scale are affine, so

    - P_sigma(X) = N(X | loc, scale^2 + sigma^2);
    - Q_sigma(z|X) = N(g, (sigma / scale)^2), with g = g(X) and g' = 1 / scale;
    - P_sigma(z|X) = N(scale (X - loc) / (scale^2 + sigma^2), sigma^2 / (scale^2 + sigma^2))
      (a conjugate Normal-Normal posterior);
    - KL(N(m_q, v_q) || N(m_p, v_p)) = [log(v_p / v_q) + v_q / v_p - 1 + (m_q - m_p)^2 / v_p] / 2
      = [e - log1p(e) + g^2 sigma^2 / (scale^2 + sigma^2)] / 2 with e = sigma^2 / scale^2,
      written so that nothing cancels at small sigma (v_q / v_p = 1 + e,
      m_q - m_p = g sigma^2 / (scale^2 + sigma^2));
    - TV(N(loc, s1^2), N(loc, s2^2)) = 2 [Phi(x* / s1) - Phi(x* / s2)], s1 = scale,
      s2^2 = scale^2 + sigma^2, where the densities cross at
      x*^2 = 2 s1^2 s2^2 log(s2 / s1) / (s2^2 - s1^2).
    """
    from scipy.special import ndtr

    xs = np.asarray(xs, dtype=np.float64)
    sigma = np.asarray(sigmas, dtype=np.float64)[:, None]
    g = (xs - loc) / scale
    ratio = sigma**2 / scale**2
    kl = 0.5 * (ratio - np.log1p(ratio) + g**2 * sigma**2 / (scale**2 + sigma**2))
    total_variance = scale**2 + sigma**2
    log_p_sigma = -0.5 * (xs - loc) ** 2 / total_variance - LOG_SQRT_2PI - 0.5 * np.log(total_variance)
    s1, s2 = scale, np.sqrt(total_variance[:, 0])
    crossing = np.sqrt(2 * s1**2 * s2**2 * np.log(s2 / s1) / (s2**2 - s1**2))
    tv = 2 * (ndtr(crossing / s1) - ndtr(crossing / s2))
    return {"kl": kl, "log_p_sigma": log_p_sigma, "tv": tv}
