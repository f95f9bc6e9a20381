"""The learned counterpart: a 1D VAE trained in Pyro with the same fixed sigma, and its gap."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from pyro_vae import estimators
from pyro_vae.evaluation import mean_se
from pyro_vae.likelihoods import GaussianLikelihood
from pyro_vae.nets import Decoder, GaussianEncoder
from pyro_vae.priors import StandardNormalPrior
from pyro_vae.train import seed_everything, train
from pyro_vae.vae import VAE

from .construction import f_decoder
from .ground_truths import GroundTruth1D
from .quadrature import kl_constructive, kl_moment_matched, standardized_posterior
from .settings import (
    DEFAULT_NUM_POINTS,
    FINE_TUNE_LR_FACTOR,
    LEARNED_EPOCHS,
    LEARNED_LR,
    LOG_SQRT_2PI,
    TAIL_SDS,
)
from .study import _max_abs


def build_vae_1d(sigma: float, hidden_sizes: Sequence[int], *, name: str = "vae1d") -> VAE:
    """A VAE with x_dim = z_dim = 1: MLP Gaussian encoder, MLP decoder with identity mean, N(0, 1)."""
    likelihood = GaussianLikelihood(sigma, link="identity")  # Appendix A: data on the real line
    return VAE(
        GaussianEncoder(1, hidden_sizes, 1),
        Decoder(1, hidden_sizes, 1, likelihood),
        StandardNormalPrior(1),
        name=name,
    )


def _float64_networks(vae: VAE):
    """float64 CPU copies of the decoder mean f_theta and the encoder (mu(X), s(X)) as numpy maps."""
    body = copy.deepcopy(vae.decoder.body).double().cpu().eval()
    encoder = copy.deepcopy(vae.encoder).double().cpu().eval()

    @torch.no_grad()
    def decoder_mean(z: np.ndarray) -> np.ndarray:
        flat = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64).reshape(-1, 1))
        return body(flat).numpy().reshape(np.shape(z))

    @torch.no_grad()
    def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = encoder(torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1, 1)))
        return q.mean.numpy()[:, 0], q.variance.sqrt().numpy()[:, 0]

    return decoder_mean, encode


def learned_log_marginal(
    decoder_mean, xs: np.ndarray, sigma: float, *, num_points: int, z_max: float = 8.0
) -> np.ndarray:
    r"""log P_theta(X) = log int N(X | f_theta(z), sigma^2) phi(z) dz by the trapezoid rule, ``(X,)``.

    A uniform grid on [-z_max, z_max] (prior mass outside < 1e-15); the caller chooses
    ``num_points`` so that the spacing resolves the narrowest posterior, sigma / max |f_theta'|.
    Chunked over X to bound memory.
    """
    z = np.linspace(-z_max, z_max, num_points)
    log_weights = np.full(num_points, math.log(z[1] - z[0]))
    log_weights[[0, -1]] += math.log(0.5)
    f = decoder_mean(z)
    log_prior = -0.5 * z**2 - LOG_SQRT_2PI + log_weights
    out = np.empty(len(xs))
    chunk = max(1, 4_000_000 // num_points)
    for start in range(0, len(xs), chunk):
        x = np.asarray(xs[start : start + chunk], dtype=np.float64)[:, None]
        log_lik = -0.5 * ((x - f) / sigma) ** 2 - LOG_SQRT_2PI - math.log(sigma)
        out[start : start + chunk] = logsumexp(log_lik + log_prior, axis=-1)
    return out


def learned_elbo(
    decoder_mean, encode, xs: np.ndarray, sigma: float, *, num_points: int = 2401, tail_sds: float = TAIL_SDS
) -> np.ndarray:
    r"""ELBO(X) = E_Q[log N(X | f_theta(z), sigma^2) + log phi(z)] + H[Q], Q = N(mu(X), s(X)^2), ``(X,)``.

    The expectation by the trapezoid rule in u = (z - mu) / s on [-tail, tail] (Q's density as
    weight, renormalized); the entropy H[Q] = log(s sqrt(2 pi e)) in closed form (Eq. 5's right side).
    """
    mu, scale = encode(xs)
    u = np.linspace(-tail_sds, tail_sds, num_points)
    weights = np.exp(-0.5 * u**2)
    weights[[0, -1]] *= 0.5
    weights /= weights.sum()
    z = mu[:, None] + scale[:, None] * u  # (X, N)
    f = decoder_mean(z)
    xs = np.asarray(xs, dtype=np.float64)[:, None]
    log_joint = -0.5 * ((xs - f) / sigma) ** 2 - math.log(sigma) - 0.5 * z**2 - 2 * LOG_SQRT_2PI
    entropy = np.log(scale) + LOG_SQRT_2PI + 0.5
    return log_joint @ weights + entropy


def _marginal_grid_size(decoder_mean, sigma: float, *, z_max: float = 8.0, minimum: int = 16001) -> int:
    """Grid points so that the spacing is <= sigma / (8 max |f_theta'|) on [-z_max, z_max]."""
    pilot = np.linspace(-z_max, z_max, 20001)
    max_slope = float(np.max(np.abs(np.diff(decoder_mean(pilot)))) / (pilot[1] - pilot[0]))
    needed = int(math.ceil(2 * z_max * 8 * max_slope / sigma)) + 1
    return int(min(max(minimum, needed), 400_001))


def evaluate_learned_vae(
    vae: VAE, truth: GroundTruth1D, sigma: float, test_x: np.ndarray, *, num_points: int, num_particles: int
) -> dict[str, Any]:
    """Gap log P(X) - ELBO of a trained 1D VAE on held-out X, beside the constructive encoder's KL.

    log P(X) and the ELBO by quadrature (float64 copies of the networks; quadrature error by
    doubling both grids), cross-checked against :mod:`pyro_vae.estimators` (importance sampling
    and a Monte Carlo ELBO with ``num_particles`` particles, float32).
    """
    decoder_mean, encode = _float64_networks(vae)
    grid = _marginal_grid_size(decoder_mean, sigma)
    log_p = learned_log_marginal(decoder_mean, test_x, sigma, num_points=grid)
    log_p_fine = learned_log_marginal(decoder_mean, test_x, sigma, num_points=2 * grid - 1)
    elbo = learned_elbo(decoder_mean, encode, test_x, sigma)
    elbo_fine = learned_elbo(decoder_mean, encode, test_x, sigma, num_points=2 * 2401 - 1)
    gap = log_p - elbo

    # Cross-check with the package's estimators (float32, z ~ Q): log-weights (K, X).
    x_tensor = torch.as_tensor(test_x, dtype=torch.float32).reshape(-1, 1).to(next(vae.parameters()).device)
    with torch.no_grad():
        log_w = (
            estimators.log_weights(vae.model, vae.guide, x_tensor, num_samples=num_particles).double().cpu()
        )
    mc_elbo = estimators.elbo_from_log_weights(log_w)
    is_log_p = estimators.log_mean_exp(log_w)
    # Monte Carlo standard error of the mean (over X) of the K-particle ELBO estimates
    mc_elbo_se = float(log_w.var(dim=0).sum().sqrt() / (math.sqrt(num_particles) * log_w.shape[1]))
    is_log_p_se = float(estimators.log_mean_exp_standard_error(log_w).pow(2).sum().sqrt() / log_w.shape[1])

    # The constructive encoder and the true decoder f = F^{-1} o G at the same sigma and X.
    post = standardized_posterior(truth, test_x, np.array([sigma]), num_points=num_points)
    constructive = kl_constructive(post)[0]
    best_gaussian = kl_moment_matched(post)[0]  # ~ the best Gaussian encoder for the true decoder
    log_p_sigma = post.log_p_sigma[0]

    # The learned decoder against F^{-1}(G(z)) and F^{-1}(G(-z)) (the prior is symmetric, so
    # z -> -z gives an equally good decoder), weighted by the prior on |z| <= 2.5.
    z = np.linspace(-2.5, 2.5, 201)
    prior = np.exp(-0.5 * z**2)
    prior /= prior.sum()
    f_learned, f_plus, f_minus = decoder_mean(z), f_decoder(truth, z), f_decoder(truth, -z)
    rms_plus = float(np.sqrt(np.sum(prior * (f_learned - f_plus) ** 2)))
    rms_minus = float(np.sqrt(np.sum(prior * (f_learned - f_minus) ** 2)))
    n = len(test_x)
    return {
        "sigma": sigma,
        "num_test": n,
        "gap_mean": float(gap.mean()),
        "gap_se": mean_se(gap)["se"],
        "gap_median": float(np.median(gap)),
        "constructive_gap_mean": float(constructive.mean()),
        "constructive_gap_se": mean_se(constructive)["se"],
        "constructive_gap_median": float(np.median(constructive)),
        "moment_matched_gap_mean": float(best_gaussian.mean()),
        "log_p_deficit_vs_p_sigma": float(log_p_sigma.mean() - log_p.mean()),
        "gap_ratio_learned_over_constructive": float(gap.mean() / constructive.mean()),
        "elbo_mean": float(elbo.mean()),
        "log_p_mean": float(log_p.mean()),
        "log_p_sigma_mean": float(log_p_sigma.mean()),
        "log_p_gt_mean": float(truth.log_pdf(test_x).mean()),
        "quadrature_points": grid,
        "quadrature_log_p_doubling_error": _max_abs(log_p_fine - log_p),
        "quadrature_elbo_doubling_error": _max_abs(elbo_fine - elbo),
        "estimators_num_particles": num_particles,
        "estimators_is_log_p_mean": float(is_log_p.mean()),
        "estimators_is_log_p_mc_se": is_log_p_se,
        "estimators_mc_elbo_mean": float(mc_elbo.mean()),
        "estimators_mc_elbo_mc_se": mc_elbo_se,
        "decoder_orientation": "+z" if rms_plus <= rms_minus else "-z",
        "decoder_rms_vs_f": rms_plus,
        "decoder_rms_vs_f_flipped": rms_minus,
        "decoder_curve": {"z": z.tolist(), "learned": f_learned.tolist()},
        "gap_per_x": gap.tolist(),
        "constructive_gap_per_x": constructive.tolist(),
    }


def _train_and_evaluate(
    truth: GroundTruth1D,
    sigma: float,
    train_x: np.ndarray,
    valid_x: np.ndarray,
    test_x: np.ndarray,
    *,
    hidden_sizes: Sequence[int],
    epochs: int,
    fine_tune_epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    num_points: int,
    num_particles: int,
    device: torch.device | str,
    progress: bool,
    log,
) -> dict[str, Any]:
    """Train one 1D VAE at ``sigma`` by SVI (the default objective, Eq. 10); :func:`evaluate_learned_vae` it.

    Two stages: ``epochs`` at ``lr``, then ``fine_tune_epochs`` at ``lr * FINE_TUNE_LR_FACTOR``
    with a *fresh* Adam (an optimizer restart; the second call of :func:`pyro_vae.train.train`
    re-registers the networks' current weights and continues from them, with its own seed so
    that it does not replay the first stage's data order and noise). The restart is deliberate:
    the same decay as one run with ``lr_schedule="step"`` (Adam's moments carried over) ends
    with a gap of 0.127 nats at sigma = 0.03 instead of 0.005 (measured, default settings).
    """
    as_tensor = lambda x: torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1)
    seed_everything(seed)
    vae = build_vae_1d(sigma, hidden_sizes, name=f"vae1d_sigma{sigma:g}")
    started = time.perf_counter()
    train_elbo, valid_elbo = [], []
    stages = ((epochs, lr), (fine_tune_epochs, lr * FINE_TUNE_LR_FACTOR))
    for stage, (stage_epochs, stage_lr) in enumerate(stages):
        if stage_epochs == 0:
            continue
        history = train(
            vae,
            (as_tensor(train_x),),
            (as_tensor(valid_x),),
            epochs=stage_epochs,
            batch_size=batch_size,
            lr=stage_lr,
            seed=seed + stage,
            device=device,
            progress=progress,
            log=None,
        )
        train_elbo += history.train_elbo
        valid_elbo += history.valid_elbo
    train_seconds = time.perf_counter() - started
    vae.eval()
    row = evaluate_learned_vae(vae, truth, sigma, test_x, num_points=num_points, num_particles=num_particles)
    row.update(train_seconds=train_seconds, train_elbo=train_elbo, valid_elbo=valid_elbo)
    if log is not None:
        log(
            f"learned VAE sigma={sigma:g}: gap {row['gap_mean']:.4f} +- {row['gap_se']:.4f} nats "
            f"(constructive {row['constructive_gap_mean']:.4f}), decoder {row['decoder_orientation']}, "
            f"rms {min(row['decoder_rms_vs_f'], row['decoder_rms_vs_f_flipped']):.3f} "
            f"({train_seconds:.0f} s)"
        )
    return row


def learned_comparison(
    truth: GroundTruth1D,
    sigmas: Sequence[float],
    *,
    num_train: int = 4000,
    num_valid: int = 500,
    num_test: int = 256,
    hidden_sizes: Sequence[int] = (64, 64),
    epochs: int = LEARNED_EPOCHS,
    fine_tune_epochs: int | None = None,
    batch_size: int = 100,
    lr: float = LEARNED_LR,
    seed: int = 0,
    num_points: int = DEFAULT_NUM_POINTS,
    num_particles: int = 1000,
    device: torch.device | str = "cpu",
    progress: bool = False,
    log=None,
) -> dict[str, Any]:
    """Train one 1D VAE per sigma on samples x = f(z) ~ P_gt and evaluate it (see module docstring).

    ``fine_tune_epochs`` (default: ``epochs``) more epochs follow at a tenth of ``lr``.
    Seeded: the data come from ``numpy.random.default_rng(seed)`` (train, valid and test drawn
    from one stream), training from :func:`pyro_vae.train.train` with ``seed``.
    """
    fine_tune_epochs = epochs if fine_tune_epochs is None else fine_tune_epochs
    rng = np.random.default_rng(seed)
    train_x, valid_x, test_x = (truth.sample(n, rng) for n in (num_train, num_valid, num_test))
    started = time.perf_counter()
    # Networks of width 64 on 1D data: handing each tiny matrix product to several threads costs
    # more than the product (30x slower per step on a busy 2-core machine), so use one thread.
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = [
            _train_and_evaluate(
                truth,
                float(sigma),
                train_x,
                valid_x,
                test_x,
                hidden_sizes=hidden_sizes,
                epochs=epochs,
                fine_tune_epochs=fine_tune_epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                num_points=num_points,
                num_particles=num_particles,
                device=device,
                progress=progress,
                log=log,
            )
            for sigma in sigmas
        ]
    finally:
        torch.set_num_threads(num_threads)
    z = np.asarray(rows[0]["decoder_curve"]["z"]) if rows else np.linspace(-2.5, 2.5, 201)
    return {
        "ground_truth": truth.describe(),
        "sigmas": [float(s) for s in sigmas],
        "config": {
            "num_train": num_train,
            "num_valid": num_valid,
            "num_test": num_test,
            "hidden_sizes": list(hidden_sizes),
            "epochs": epochs,
            "fine_tune_epochs": fine_tune_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "fine_tune_lr": lr * FINE_TUNE_LR_FACTOR,
            "seed": seed,
            "objective": "meanfield (Eq. 10)",
        },
        "true_decoder": {
            "z": z.tolist(),
            "f": f_decoder(truth, z).tolist(),
            "f_flipped": f_decoder(truth, -z).tolist(),
        },
        "test_x": test_x.tolist(),
        "rows": rows,
        "gap_mean": [row["gap_mean"] for row in rows],
        "constructive_gap_mean": [row["constructive_gap_mean"] for row in rows],
        "seconds": time.perf_counter() - started,
    }
