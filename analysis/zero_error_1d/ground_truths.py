"""Ground truths: smooth 1D distributions with a positive density, log CDF, log survival and
inverse CDF, accurate in both tails."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import log_ndtr, ndtri_exp

from pyro_vae.errors import ConfigError

from .settings import (
    DEFAULT_LOCS,
    DEFAULT_SCALES,
    DEFAULT_WEIGHTS,
    ICDF_MAX_ITER,
    ICDF_TOL,
    LOG_HALF,
    LOG_SQRT_2PI,
    WEIGHT_SUM_TOL,
)


def _normal_quantile(log_u: np.ndarray, log_v: np.ndarray) -> np.ndarray:
    """G^{-1}(u) from log u and log v = log(1 - u), each used on the side where it is accurate.

    ``ndtri_exp(log u)`` is accurate for u <= 1/2; for u > 1/2 the symmetric ``-ndtri_exp(log v)``
    avoids forming 1 - u, which would lose every digit of a right-tail probability.
    """
    lower_tail = log_u <= log_v
    # np.where evaluates both branches; clipping at log(1/2) keeps the unused one finite.
    return np.where(
        lower_tail, ndtri_exp(np.minimum(log_u, LOG_HALF)), -ndtri_exp(np.minimum(log_v, LOG_HALF))
    )


class GroundTruth1D:
    r"""A 1D distribution with a smooth positive density: the P_gt of Appendix A.

    Subclasses give ``log_pdf``, ``log_cdf`` (log F), ``log_sf`` (log(1 - F)), ``dlog_pdf``
    (d/dx log p, for g'') and a ``_bracket`` of the quantile; :meth:`icdf_log` then inverts the
    CDF by a safeguarded Newton iteration in log space. Everything is float64 and vectorized.
    """

    name = "ground truth"

    def log_pdf(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_cdf(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_sf(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def dlog_pdf(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bracket(self, log_u: np.ndarray, log_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def describe(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return np.exp(self.log_cdf(np.asarray(x, dtype=np.float64)))

    def icdf(self, u: np.ndarray) -> np.ndarray:
        """F^{-1}(u) for u in (0, 1)."""
        u = np.asarray(u, dtype=np.float64)
        return self.icdf_log(np.log(u), np.log1p(-u))

    def icdf_log(self, log_u: np.ndarray, log_v: np.ndarray) -> np.ndarray:
        r"""F^{-1}(u) from log u and log v = log(1 - u), by safeguarded Newton on the log CDF.

        On the lower side (u <= 1/2) it solves log F(x) = log u, on the upper side
        log(1 - F(x)) = log v: in log space both are smooth and nearly linear far into the tails,
        where F itself underflows or rounds to 1. Newton's step uses
        d log F / dx = p / F = exp(log p - log F); a step that leaves the current bracket is
        replaced by bisection, so the iteration converges for every u.
        """
        log_u, log_v = np.broadcast_arrays(np.asarray(log_u, np.float64), np.asarray(log_v, np.float64))
        lower_tail = log_u <= log_v
        target = np.where(lower_tail, log_u, log_v)
        low, high = self._bracket(log_u, log_v)
        x = 0.5 * (low + high)
        for _ in range(ICDF_MAX_ITER):
            log_tail = np.where(lower_tail, self.log_cdf(x), self.log_sf(x))
            # residual increases with x on both sides; its derivative is p / (tail mass)
            residual = np.where(lower_tail, log_tail - target, target - log_tail)
            high = np.where(residual > 0, x, high)
            low = np.where(residual <= 0, x, low)
            x_new = x - residual / np.exp(self.log_pdf(x) - log_tail)
            outside = ~((x_new >= low) & (x_new <= high))
            x_new = np.where(outside, 0.5 * (low + high), x_new)
            converged = np.abs(x_new - x) <= ICDF_TOL * (1 + np.abs(x))
            x = x_new
            if converged.all():
                break
        return x

    def icdf_of_normal_cdf(self, z: np.ndarray) -> np.ndarray:
        """f(z) = F^{-1}(G(z)), with G(z) passed on as log G(z) and log G(-z) (no rounding to 1)."""
        z = np.asarray(z, dtype=np.float64)
        return self.icdf_log(log_ndtr(z), log_ndtr(-z))

    def normal_icdf_of_cdf(self, x: np.ndarray) -> np.ndarray:
        """g(x) = G^{-1}(F(x)), from log F on the left and log(1 - F) on the right."""
        x = np.asarray(x, dtype=np.float64)
        return _normal_quantile(self.log_cdf(x), self.log_sf(x))

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """``num`` draws x = f(z), z ~ N(0, 1): the tutorial's own argument that f(z) ~ P_gt."""
        return self.icdf_of_normal_cdf(rng.standard_normal(num))


class LocationScale1D(GroundTruth1D):
    """A family with a location and a scale: t = (x - loc) / scale is the standardized variable."""

    family = "location-scale distribution"

    def __init__(self, loc: float = 0.0, scale: float = 1.0):
        if not (math.isfinite(loc) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"a {self.family} needs a finite loc and a positive scale, got {loc}, {scale}")
        self.loc, self.scale = float(loc), float(scale)

    def _standardize(self, x):
        return (np.asarray(x, dtype=np.float64) - self.loc) / self.scale


class Gaussian1D(LocationScale1D):
    """N(loc, scale^2): f and g are affine and every quantity of the study has a closed form."""

    name, family = "gaussian", "Gaussian"

    def log_pdf(self, x):
        t = self._standardize(x)
        return -0.5 * t**2 - LOG_SQRT_2PI - math.log(self.scale)

    def log_cdf(self, x):
        return log_ndtr(self._standardize(x))

    def log_sf(self, x):
        return log_ndtr(-self._standardize(x))

    def dlog_pdf(self, x):
        return -self._standardize(x) / self.scale

    def icdf_log(self, log_u, log_v):
        return self.loc + self.scale * _normal_quantile(np.asarray(log_u), np.asarray(log_v))

    def icdf_of_normal_cdf(self, z):
        return self.loc + self.scale * np.asarray(z, dtype=np.float64)

    def normal_icdf_of_cdf(self, x):
        return self._standardize(x)

    def describe(self):
        return {"family": self.name, "loc": self.loc, "scale": self.scale}


class GaussianMixture1D(GroundTruth1D):
    r"""sum_k w_k N(loc_k, scale_k^2): smooth, positive everywhere, possibly bimodal.

    log p, log F and log(1 - F) are log-sum-exps over the components (``log_ndtr`` per
    component), so they stay accurate in both tails. The quantile F^{-1}(u) lies between the
    smallest and the largest component quantile (F is a convex combination of the component
    CDFs), which brackets the Newton iteration of :meth:`GroundTruth1D.icdf_log`.
    """

    name = "mixture"

    def __init__(
        self,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        locs: Sequence[float] = DEFAULT_LOCS,
        scales: Sequence[float] = DEFAULT_SCALES,
    ):
        weights, locs, scales = (np.asarray(v, dtype=np.float64).ravel() for v in (weights, locs, scales))
        if not len(weights) == len(locs) == len(scales):
            raise ConfigError(
                f"--weights, --locs and --scales need one value per component, got "
                f"{len(weights)}, {len(locs)} and {len(scales)} values"
            )
        if len(weights) == 0:
            raise ConfigError("a mixture needs at least one component")
        if not np.all(np.isfinite(np.concatenate([weights, locs, scales]))):
            raise ConfigError("mixture weights, locs and scales must be finite numbers")
        if np.any(weights < 0):
            raise ConfigError(f"mixture weights must be non-negative, got {weights.tolist()}")
        if abs(weights.sum() - 1) > WEIGHT_SUM_TOL:
            raise ConfigError(
                f"mixture weights must sum to one, got {weights.tolist()} (sum {weights.sum():g})"
            )
        if np.any(scales <= 0):
            raise ConfigError(f"mixture scales must be positive, got {scales.tolist()}")
        keep = weights > 0  # a zero-weight component changes nothing; dropping it keeps log w finite
        self.weights, self.locs, self.scales = weights[keep], locs[keep], scales[keep]
        self._log_weights = np.log(self.weights)

    def _standardize(self, x):
        # (..., K): every component's standardized value
        return (np.asarray(x, dtype=np.float64)[..., None] - self.locs) / self.scales

    def _component_log_pdf(self, x):
        t = self._standardize(x)
        return self._log_weights - 0.5 * t**2 - LOG_SQRT_2PI - np.log(self.scales)

    # np.logaddexp.reduce: a log-sum-exp over the few components, much faster than scipy's
    # general logsumexp inside the Newton iteration of icdf_log.
    def log_pdf(self, x):
        return np.logaddexp.reduce(self._component_log_pdf(x), axis=-1)

    def log_cdf(self, x):
        return np.logaddexp.reduce(self._log_weights + log_ndtr(self._standardize(x)), axis=-1)

    def log_sf(self, x):
        return np.logaddexp.reduce(self._log_weights + log_ndtr(-self._standardize(x)), axis=-1)

    def dlog_pdf(self, x):
        """d/dx log p = sum_k r_k(x) (loc_k - x) / scale_k^2 with responsibilities r_k(x)."""
        component = self._component_log_pdf(x)
        responsibilities = np.exp(component - np.logaddexp.reduce(component, axis=-1, keepdims=True))
        slopes = (self.locs - np.asarray(x, dtype=np.float64)[..., None]) / self.scales**2
        return np.sum(responsibilities * slopes, axis=-1)

    def _bracket(self, log_u, log_v):
        z = _normal_quantile(log_u, log_v)[..., None]
        component_quantiles = self.locs + self.scales * z
        return component_quantiles.min(axis=-1), component_quantiles.max(axis=-1)

    def describe(self):
        return {
            "family": self.name,
            "weights": self.weights.tolist(),
            "locs": self.locs.tolist(),
            "scales": self.scales.tolist(),
        }


class Gumbel1D(LocationScale1D):
    r"""Gumbel (maximum) distribution: skewed to the right, density positive on the whole line.

    With t = (x - loc) / scale:  log p = -log scale - t - e^{-t},  log F = -e^{-t},
    log(1 - F) = log(-expm1(-e^{-t})),  F^{-1}(u) = loc - scale log(-log u). The left tail decays
    like exp(-e^{-t}), the right one exponentially: g = G^{-1}(F) is curved everywhere.
    """

    name, family = "gumbel", "Gumbel"

    def _exp_minus_t(self, x):
        # e^{-t} overflows to +inf only where the density and the CDF are exactly 0 in float64
        with np.errstate(over="ignore"):
            return np.exp(-self._standardize(x))

    def log_pdf(self, x):
        return -math.log(self.scale) - self._standardize(x) - self._exp_minus_t(x)

    def log_cdf(self, x):
        return -self._exp_minus_t(x)

    def log_sf(self, x):
        return np.log(-np.expm1(-self._exp_minus_t(x)))

    def dlog_pdf(self, x):
        return (self._exp_minus_t(x) - 1) / self.scale

    def icdf_log(self, log_u, log_v):
        log_u, log_v = np.asarray(log_u, np.float64), np.asarray(log_v, np.float64)
        # -log u, accurate also for u near 1 where it equals -log1p(-v) ~ v
        minus_log_u = np.where(log_u <= log_v, -log_u, -np.log1p(-np.exp(np.minimum(log_v, LOG_HALF))))
        return self.loc - self.scale * np.log(minus_log_u)

    def describe(self):
        return {"family": self.name, "loc": self.loc, "scale": self.scale}
