"""The study's figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..common import plot_with_se, save_figure
from .construction import g_encoder, log_g_prime
from .ground_truths import GroundTruth1D
from .quadrature import kl_constructive, standardized_posterior
from .settings import DEFAULT_NUM_POINTS


def _sigma_colors(num: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(num - 1, 1) * 0.9) for i in range(num)]


def plot_kl_vs_sigma(path: Path, studies: dict[str, dict[str, Any]]) -> None:
    """X-averaged KL(Q_sigma || P_sigma(z|X)) against sigma, log-log, with the fit and a sigma^2 guide."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for i, (name, study) in enumerate(studies.items()):
        sigmas, kl = np.asarray(study["sigmas"]), np.asarray(study["kl"])
        color = f"C{i}"
        ax.fill_between(sigmas, kl.min(axis=1), kl.max(axis=1), color=color, alpha=0.12, lw=0)
        ax.plot(
            sigmas,
            study["kl_mean"],
            "o-",
            color=color,
            label=f"{name}: constructive Q, slope {study['slope']:.3f} +- {study['slope_stderr']:.3f}",
        )
        ax.plot(
            sigmas,
            study["kl_moment_matched_mean"],
            "s--",
            color=color,
            mfc="none",
            alpha=0.7,
            label=f"{name}: moment-matched Gaussian",
        )
    first = next(iter(studies.values()))
    sigmas = np.asarray(first["sigmas"])
    anchor = first["kl_mean"][int(np.argmin(sigmas))] / sigmas.min() ** 2
    guide = np.geomspace(sigmas.min(), sigmas.max(), 50)
    ax.plot(guide, anchor * guide**2, ":", color="0.3", label="guide: KL proportional to sigma^2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma (decoder noise)")
    ax.set_ylabel("KL(Q_sigma(z|X) || P_sigma(z|X))  (nats)")
    ax.set_title(
        "Appendix A: the approximation error vanishes like sigma^2\n(lines: mean over X; band: range)"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_p_sigma(path: Path, name: str, densities: dict[str, np.ndarray], sigmas: np.ndarray) -> None:
    """P_sigma against P_gt, and (P_sigma - P_gt) / sigma^2, which tends to p_gt'' / 2."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    x, p_gt = densities["x"], densities["p_gt"]
    # show where P_gt carries all but 1e-4 of its mass, not the whole integration grid
    cdf = np.cumsum(p_gt) / np.sum(p_gt)
    shown = (cdf > 1e-4) & (cdf < 1 - 1e-4)
    colors = _sigma_colors(len(sigmas))
    left.plot(x[shown], p_gt[shown], color="k", lw=3, alpha=0.4, label="P_gt")
    for sigma, p_sigma, tv, color in zip(sigmas, densities["p_sigma"], densities["tv"], colors):
        left.plot(x[shown], p_sigma[shown], color=color, lw=1.2, label=f"sigma={sigma:g} (TV {tv:.1e})")
        right.plot(
            x[shown], (p_sigma[shown] - p_gt[shown]) / sigma**2, color=color, lw=1.2, label=f"sigma={sigma:g}"
        )
    left.set_title(f"{name}: P_sigma(X) against P_gt(X)", fontsize=10)
    right.set_title("(P_sigma - P_gt) / sigma^2: the curves collapse, the error is O(sigma^2)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("X")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("density")
    save_figure(fig, path)


def plot_posteriors(
    path: Path, truth: GroundTruth1D, x: float, sigmas: np.ndarray, *, num_points: int = DEFAULT_NUM_POINTS
) -> None:
    """Q^0(z0|X) against the exact P^0_sigma(z0|X) for one X at every sigma (Eq. 17's coordinate)."""
    post = standardized_posterior(truth, np.array([x]), sigmas, num_points=num_points)
    kl = kl_constructive(post)[:, 0]
    g, g_prime = float(g_encoder(truth, x)), float(np.exp(log_g_prime(truth, x)))
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    colors = _sigma_colors(len(sigmas))
    z0_q = np.linspace(g - 4 * g_prime, g + 4 * g_prime, 400)
    left.plot(
        z0_q,
        np.exp(-0.5 * ((z0_q - g) / g_prime) ** 2) / (g_prime * math.sqrt(2 * math.pi)),
        color="k",
        lw=3,
        alpha=0.4,
        label="Q^0(z0|X) = N(g(X), g'(X)^2)",
    )
    for i, (sigma, color) in enumerate(zip(sigmas, colors)):
        z0, log_post, log_q = post.z0[i, 0], post.log_posterior0[i, 0], post.log_q0[i, 0]
        inside = np.abs(z0 - g) <= 4 * g_prime
        left.plot(
            z0[inside],
            np.exp(log_post[inside]),
            color=color,
            lw=1.2,
            label=f"P^0_sigma(z0|X), sigma={sigma:g}, KL {kl[i]:.1e}",
        )
        right.plot(
            z0[inside], log_post[inside] - log_q[inside], color=color, lw=1.2, label=f"sigma={sigma:g}"
        )
    left.set_title(f"{truth.name}, X = {x:.3f}: z = g(X) + (z0 - g(X)) sigma", fontsize=10)
    left.set_ylabel("density in z0")
    right.axhline(0, color="k", lw=0.8)
    right.set_title("log P^0_sigma - log Q^0: shrinks like sigma", fontsize=10)
    right.set_ylabel("log ratio")
    for ax in (left, right):
        ax.set_xlabel("z0 (standardized latent)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_kl_vs_x(path: Path, name: str, curvature: dict[str, Any]) -> None:
    """KL / sigma^2 against X beside the second-order prediction and its curvature ingredient."""
    x = np.asarray(curvature["xs"])
    sigma = curvature["sigma"]
    fig = Figure(figsize=(7, 7))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, curvature["kl_over_sigma2"], "o", ms=3, color="C0", label="constructive Q: KL / sigma^2")
    top.plot(
        x,
        curvature["predicted_kl_over_sigma2"],
        "-",
        color="C0",
        label="prediction (15 c^2 - 6 c d + d^2) / 2",
    )
    top.plot(
        x,
        curvature["kl_moment_matched_over_sigma2"],
        "s",
        ms=3,
        mfc="none",
        color="C1",
        label="moment-matched Gaussian: KL / sigma^2",
    )
    top.plot(
        x,
        curvature["predicted_moment_matched_over_sigma2"],
        "-",
        color="C1",
        label="prediction 3 c^2 = (3/4) (g''/g')^2",
    )
    top.set_yscale("log")
    top.set_ylabel(f"KL / sigma^2 at sigma = {sigma:g}")
    top.set_title(f"{name}: where the error comes from (c = g''/(2g'), d = g g')")
    bottom.plot(
        x,
        np.abs(curvature["g_second_over_g_prime"]),
        color="C2",
        label="|g''(X)| / g'(X)  (curvature, Eq. 21)",
    )
    bottom.plot(
        x, np.sqrt(2 * np.asarray(curvature["prior_term"])), color="C3", label="|g(X) g'(X)|  (prior tilt)"
    )
    bottom.set_xlabel("X")
    bottom.set_ylabel("coefficient")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_learned_decoder(path: Path, learned: dict[str, Any]) -> None:
    """The learned decoder mean against F^{-1}(G(z)) and F^{-1}(G(-z)), one panel per sigma."""
    rows = learned["rows"]
    fig = Figure(figsize=(4 * max(len(rows), 1), 3.8))
    axes = np.atleast_1d(fig.subplots(1, max(len(rows), 1)))
    true = learned["true_decoder"]
    for ax, row in zip(axes, rows):
        ax.plot(true["z"], true["f"], color="k", lw=3, alpha=0.35, label="f(z) = F^-1(G(z))")
        ax.plot(true["z"], true["f_flipped"], color="k", lw=1.5, ls="--", alpha=0.5, label="f(-z)")
        ax.plot(
            row["decoder_curve"]["z"],
            row["decoder_curve"]["learned"],
            color="C3",
            label=f"learned f_theta ({row['decoder_orientation']})",
        )
        rms = min(row["decoder_rms_vs_f"], row["decoder_rms_vs_f_flipped"])
        ax.set_title(f"sigma = {row['sigma']:g}: rms {rms:.3f}")
        ax.set_xlabel("z")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("decoder mean")
    save_figure(fig, path)


def plot_learned_gap(path: Path, learned: dict[str, Any]) -> None:
    """Mean gap log P(X) - ELBO on held-out X: the learned VAE against the constructive encoder."""
    rows = learned["rows"]
    sigmas = [row["sigma"] for row in rows]
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    plot_with_se(ax, sigmas, rows, "gap_mean", "gap_se", color="C3", label="learned VAE (SVI, Eq. 10)")
    plot_with_se(
        ax, sigmas, rows, "constructive_gap_mean", "constructive_gap_se", marker="s", color="C0",
        label="constructive Q_sigma with f = F^-1 o G",
    )  # fmt: skip
    ax.plot(
        sigmas,
        [r["moment_matched_gap_mean"] for r in rows],
        "^--",
        color="C0",
        mfc="none",
        label="moment-matched Gaussian with f = F^-1 o G",
    )
    ax.set_xscale("log")
    ax.set_xticks(sigmas, [f"{sigma:g}" for sigma in sigmas])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("mean log P(X) - ELBO(X) on held-out X (nats)")
    ax.set_title("approximation gap: a trained VAE against the proof's construction")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)
