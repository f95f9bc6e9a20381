"""The construction of Appendix A: f = F^{-1} o G, g = G^{-1} o F, g', g'', and the second-order
expansion of the KL (Eqs. 16-22)."""

from __future__ import annotations

import numpy as np

from .ground_truths import GroundTruth1D
from .settings import LOG_SQRT_2PI


def f_decoder(truth: GroundTruth1D, z: np.ndarray) -> np.ndarray:
    """f(z) = F^{-1}(G(z)): the decoder mean whose push-forward of N(0, 1) is P_gt (Appendix A)."""
    return truth.icdf_of_normal_cdf(z)


def g_encoder(truth: GroundTruth1D, x: np.ndarray) -> np.ndarray:
    """g(X) = G^{-1}(F(X)) = f^{-1}(X): the mean of the constructive encoder Q_sigma(z|X)."""
    return truth.normal_icdf_of_cdf(x)


def log_g_prime(truth: GroundTruth1D, x: np.ndarray) -> np.ndarray:
    r"""log g'(X) = log p_gt(X) - log phi(g(X)), since d/dX G^{-1}(F(X)) = p_gt(X) / phi(g(X)).

    In log space the ratio of two tiny tail densities stays finite.
    """
    x = np.asarray(x, dtype=np.float64)
    g = g_encoder(truth, x)
    return truth.log_pdf(x) + 0.5 * g**2 + LOG_SQRT_2PI


def g_second(truth: GroundTruth1D, x: np.ndarray) -> np.ndarray:
    r"""g''(X) = g'(X) [ (log p_gt)'(X) + g(X) g'(X) ].

    From log g' = log p_gt(X) + g(X)^2 / 2 + const: differentiating gives
    g'' / g' = (log p_gt)'(X) + g(X) g'(X).
    """
    x = np.asarray(x, dtype=np.float64)
    g, g_prime = g_encoder(truth, x), np.exp(log_g_prime(truth, x))
    return g_prime * (truth.dlog_pdf(x) + g * g_prime)


def kl_expansion(truth: GroundTruth1D, x: np.ndarray) -> dict[str, np.ndarray]:
    r"""Leading-order coefficients of the KL as sigma -> 0 (Eqs. 18-21 carried to second order).

    In the standardized coordinate, with Delta = z0 - g(X) ~ Q^0 = N(0, g'^2), the exact
    posterior of Eq. 18 is, including the prior factor P(z = r) that Eq. 19 folds into C,

        log P^0_sigma(z0|X) = log Q^0(z0|X) + sigma eps(Delta) + O(sigma^2) + const,
        eps(Delta) = -(f' f'' / 2) Delta^3 - g(X) Delta,

    from the Taylor expansion of f in Eq. 20 (third term) and of log phi(r). For any
    P = Q exp(sigma eps + ...) / Z, KL(Q || P) = sigma^2 Var_Q(eps) / 2 + O(sigma^3). With
    f' = 1/g', f'' = -g''/g'^3, E Delta^2 = g'^2, E Delta^4 = 3 g'^4, E Delta^6 = 15 g'^6:

        KL / sigma^2 -> (15 c^2 - 6 c d + d^2) / 2,   c = g''/(2 g'),  d = g g'.

    c is the curvature of Eq. 21; d is the prior's tilt. A Gaussian that may also move its mean
    and scale (the moment-matched one) absorbs the parts of eps along Delta and Delta^2; what is
    left is the Hermite polynomial Delta^3 - 3 g'^2 Delta with variance 6 g'^6, so

        KL_best Gaussian / sigma^2 -> 3 c^2 = (3/4) (g''/g')^2,

    the curvature alone: the "bulk of the approximation error" of the tutorial's last sentence.

    Returns
    -------
    dict with ``c``, ``d``, ``g_second_over_g_prime`` (= 2c), ``kl_over_sigma2``,
    ``moment_matched_over_sigma2``, ``curvature_term`` (the 15 c^2 / 2 part) and
    ``prior_term`` (the d^2 / 2 part).
    """
    x = np.asarray(x, dtype=np.float64)
    g, g_prime = g_encoder(truth, x), np.exp(log_g_prime(truth, x))
    ratio = truth.dlog_pdf(x) + g * g_prime  # g'' / g'
    c, d = ratio / 2, g * g_prime
    return {
        "c": c,
        "d": d,
        "g_second_over_g_prime": ratio,
        "kl_over_sigma2": (15 * c**2 - 6 * c * d + d**2) / 2,
        "moment_matched_over_sigma2": 3 * c**2,
        "curvature_term": 15 * c**2 / 2,
        "prior_term": d**2 / 2,
    }
