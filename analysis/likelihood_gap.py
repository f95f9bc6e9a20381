r"""log P(X) against the ELBO for a trained VAE: both sides of the tutorial's Eq. 5, per image.

    log P(X) - KL(Q(z|X) || P(z|X)) = E_Q[log P(X|z)] - KL(Q(z|X) || P(z))        (Eq. 5)

The right-hand side (the ELBO) is what training maximizes; log P(X) is estimated by importance
sampling with Q as proposal (the IWAE bound, which tightens as K grows); their difference
estimates the KL on the left. The study writes ``likelihood_gap.json`` and:

- ``likelihood_vs_k.png``: mean log p-hat_K(x) and the ELBO against K, with error bars;
- ``gap_histogram.png``: the per-image gap log p-hat_Kmax(x) - ELBO(x);
- ``gap_vs_khat.png``: the gap against PSIS k-hat (how reliable each estimate is);
- ``rate_distortion.png``: the ELBO split into distortion -E_Q[log P(X|z)] and rate
  KL(Q(z|X) || P(z)), in nats and bits (section 2.4.2);
- ``naive_estimator.png``: log P(X) estimated from z ~ P(z) (section 2, Fig. 3) against the
  number of samples, beside the estimate with z ~ Q(z|X).

    python -m analysis.likelihood_gap runs/quickstart --ks 1 10 100 1000 5000 --out results/gap
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from pyro_vae import estimators
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import NATS_PER_BIT
from pyro_vae.runs import load_eval_data, load_vae_run
from pyro_vae.train import resolve_device, seed_everything
from pyro_vae.vae import VAE

from .common import cost_of, mean_se, plot_with_se, run_study, save_figure, study_parser, write_results

NAME = "likelihood_gap"


def per_image_estimates(
    vae: VAE,
    images: torch.Tensor,
    ks: list[int],
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Per-image IS estimates for every K in ``ks`` from one set of max(ks) particles.

    Returns arrays: ``log_likelihood`` ``(len(ks), N)`` (mean over disjoint blocks of K particles,
    see :func:`~pyro_vae.estimators.block_log_mean_exp`), ``elbo``, ``gap``, ``khat``, ``ess``,
    ``rate``, ``distortion`` (each ``(N,)``).
    """
    k_max = max(ks)
    out: dict[str, list] = {
        key: [] for key in ("log_likelihood", "elbo", "khat", "ess", "rate", "distortion")
    }
    with tqdm(
        total=images.shape[0],
        desc=f"K={k_max}",
        unit="image",
        disable=None if progress else True,
        leave=False,
    ) as bar:
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size]
            terms = estimators.log_weight_terms(
                vae.model, vae.guide, x, num_samples=k_max, chunk_size=chunk_size
            )
            summary = estimators.summarize_log_weights(terms)
            log_w = terms.log_weights
            out["log_likelihood"].append(
                torch.stack([estimators.block_log_mean_exp(log_w, k).mean(0) for k in ks]).double().cpu()
            )
            for key in ("elbo", "khat", "ess", "rate", "distortion"):
                out[key].append(getattr(summary, key).double().cpu())
            bar.update(x.shape[0])
    arrays = {key: torch.cat(parts, dim=-1).numpy() for key, parts in out.items()}
    arrays["gap"] = arrays["log_likelihood"][-1] - arrays["elbo"]
    return arrays


def naive_prior_estimates(
    vae: VAE, images: torch.Tensor, sample_counts: list[int], *, chunk_size: int | None = None
) -> np.ndarray:
    """log P(X) ~ log (1/n) sum_i P(X | z_i), z_i ~ P(z): the estimator of section 2, ``(len(counts), N)``.

    Implemented as importance sampling with the prior as proposal (then w_i = P(X | z_i)), from
    one set of max(counts) draws split into disjoint blocks.
    """

    def prior_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", vae.prior())

    log_w = estimators.log_weights(
        vae.model, prior_guide, images, num_samples=max(sample_counts), chunk_size=chunk_size
    )
    return (
        torch.stack([estimators.block_log_mean_exp(log_w, n).mean(0) for n in sample_counts])
        .double()
        .cpu()
        .numpy()
    )


def summarize(arrays: dict[str, np.ndarray], ks: list[int]) -> dict[str, Any]:
    """Split-level numbers: means with standard errors over images; paired gains over the ELBO."""
    elbo_mean, elbo_se = mean_se(arrays["elbo"]).values()
    rows = []
    for k, values in zip(ks, arrays["log_likelihood"]):
        mean, se = mean_se(values).values()
        gain, gain_se = mean_se(values - arrays["elbo"]).values()
        rows.append(
            {
                "k": k,
                "log_likelihood": mean,
                "log_likelihood_se": se,
                "gain_over_elbo": gain,
                "gain_over_elbo_se": gain_se,
            }
        )
    rate, distortion = float(arrays["rate"].mean()), float(arrays["distortion"].mean())
    k_max = max(ks)
    khat = arrays["khat"]
    return {
        "ks": ks,
        "by_k": rows,
        "elbo": elbo_mean,
        "elbo_se": elbo_se,
        "log_likelihood": rows[-1]["log_likelihood"],
        "log_likelihood_se": rows[-1]["log_likelihood_se"],
        "gap": rows[-1]["gain_over_elbo"],
        "gap_se": rows[-1]["gain_over_elbo_se"],
        "gap_quantiles": {q: float(np.quantile(arrays["gap"], q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "ess_fraction": float(arrays["ess"].mean() / k_max),
        "khat_over_0_7": float((khat > estimators.KHAT_THRESHOLD).mean()),
        "khat_median": float(np.nanmedian(khat)),
        "gap_khat_correlation": float(np.corrcoef(arrays["gap"], khat)[0, 1])
        if khat.size > 2
        else float("nan"),
        "rate_nats": rate,
        "distortion_nats": distortion,
        "rate_bits": rate / NATS_PER_BIT,
        "distortion_bits": distortion / NATS_PER_BIT,
        "elbo_bits": elbo_mean / NATS_PER_BIT,
    }


def plot_likelihood_vs_k(path: Path, summary: dict[str, Any]) -> None:
    ks = [row["k"] for row in summary["by_k"]]
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    plot_with_se(
        left, ks, summary["by_k"], "log_likelihood", "log_likelihood_se", label="log p-hat_K(x), z ~ Q(z|X)"
    )
    left.axhline(summary["elbo"], color="C1", ls="--", label=f"ELBO {summary['elbo']:.2f}")
    left.set_xscale("log")
    left.set_xlabel("K (particles per image)")
    left.set_ylabel("nats per image")
    left.set_title("mean over images (bars: se over images)")
    left.legend()
    plot_with_se(right, ks, summary["by_k"], "gain_over_elbo", "gain_over_elbo_se", color="C2")
    right.set_xscale("log")
    right.set_xlabel("K (particles per image)")
    right.set_ylabel("log p-hat_K(x) - ELBO(x)  (nats)")
    right.set_title("paired gain over the ELBO -> KL(Q(z|X) || P(z|X))")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_gap_histogram(path: Path, gap: np.ndarray, k_max: int) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.hist(gap, bins=40, color="C0", alpha=0.8)
    ax.axvline(float(np.mean(gap)), color="k", ls="--", label=f"mean {np.mean(gap):.2f} nats")
    ax.set_xlabel(f"log p-hat_{k_max}(x) - ELBO(x)  (nats)")
    ax.set_ylabel("images")
    ax.set_title("per-image gap: estimate of KL(Q(z|X) || P(z|X))")
    ax.legend()
    save_figure(fig, path)


def plot_gap_vs_khat(path: Path, gap: np.ndarray, khat: np.ndarray) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.scatter(khat, gap, s=6, alpha=0.5)
    ax.axvline(estimators.KHAT_THRESHOLD, color="C3", ls="--", label="k-hat = 0.7 (unreliable beyond)")
    ax.set_xlabel("PSIS k-hat")
    ax.set_ylabel("gap (nats)")
    ax.set_title("larger gaps come with heavier-tailed weights")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_rate_distortion(path: Path, summary: dict[str, Any]) -> None:
    fig = Figure(figsize=(8, 3.5))
    for ax, unit, scale in zip(fig.subplots(1, 2), ("nats", "bits"), (1.0, 1 / NATS_PER_BIT)):
        distortion, rate = summary["distortion_nats"] * scale, summary["rate_nats"] * scale
        ax.barh([0], [distortion], color="C0", label=f"distortion -E_Q log P(X|z) = {distortion:.1f}")
        ax.barh([0], [rate], left=[distortion], color="C1", label=f"rate KL(Q(z|X) || P(z)) = {rate:.1f}")
        ax.set_yticks([])
        ax.set_xlabel(f"{unit} per image  (-ELBO = {distortion + rate:.1f})")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8)
    save_figure(fig, path)


def plot_naive(path: Path, counts: list[int], naive: np.ndarray, ks: list[int], q_based: np.ndarray) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(counts, naive.mean(1), marker="o", label="z ~ P(z): log (1/n) sum P(X|z_i)")
    ax.plot(ks, q_based.mean(1), marker="s", label="z ~ Q(z|X): log p-hat_K(x)")
    ax.set_xscale("log")
    ax.set_xlabel("samples per image (n or K)")
    ax.set_ylabel("mean estimate of log P(X) (nats)")
    ax.set_title("sampling from the prior needs far more samples (Fig. 3)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = study_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a VAE run folder from 'pyro-vae train vae'")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100, 1000, 5000])
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    parser.add_argument(
        "--subset", type=int, default=1000, help="first N images of the split (default 1000; 0 for all)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument(
        "--naive-images", type=int, default=20, help="images for the prior-sampling estimator"
    )
    parser.add_argument("--naive-counts", type=int, nargs="+", default=[1, 10, 100, 1000, 10_000, 50_000])
    args = parser.parse_args(argv)
    if min(args.ks) < 1 or min(args.naive_counts) < 1:
        raise ConfigError("--ks and --naive-counts must be positive")
    ks, counts = sorted(set(args.ks)), sorted(set(args.naive_counts))

    device = resolve_device(args.device)
    config, vae = load_vae_run(args.run_dir, device=device)
    (images,) = load_eval_data(
        config, args.split, subset=args.subset or None, data_dir=args.data_dir, device=device
    )
    seed_everything(config.train.eval_seed)
    started = time.perf_counter()
    arrays = per_image_estimates(
        vae, images, ks, batch_size=args.batch_size, chunk_size=args.chunk_size, progress=not args.no_progress
    )
    summary = summarize(arrays, ks)
    naive_images = images[: args.naive_images]
    naive = naive_prior_estimates(vae, naive_images, counts, chunk_size=args.chunk_size)
    q_based = arrays["log_likelihood"][:, : naive_images.shape[0]]
    summary["naive"] = {
        "num_images": int(naive_images.shape[0]),
        "counts": counts,
        "prior_sampling_mean": naive.mean(1).tolist(),
        "q_sampling_mean": q_based.mean(1).tolist(),
        "q_sampling_ks": ks,
        # How far the largest prior-sampling estimate still is below the single-sample ELBO and
        # below the best Q-based estimate, on the same images.
        "shortfall_vs_elbo": float(arrays["elbo"][: naive_images.shape[0]].mean() - naive[-1].mean()),
        "shortfall_vs_best_q": float(q_based[-1].mean() - naive[-1].mean()),
    }
    summary.update(
        run_dir=str(args.run_dir),
        split=args.split,
        num_images=int(images.shape[0]),
        seconds=time.perf_counter() - started,
        cost=cost_of(args.run_dir, eval_seconds=time.perf_counter() - started),
        per_image={"gap": arrays["gap"].tolist(), "khat": arrays["khat"].tolist()},
    )

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot_likelihood_vs_k(out / "likelihood_vs_k.png", summary)
    plot_gap_histogram(out / "gap_histogram.png", arrays["gap"], max(ks))
    plot_gap_vs_khat(out / "gap_vs_khat.png", arrays["gap"], arrays["khat"])
    plot_rate_distortion(out / "rate_distortion.png", summary)
    plot_naive(out / "naive_estimator.png", counts, naive, ks, q_based)
    path = write_results(out, NAME, summary)
    print(
        f"{summary['num_images']} {args.split} images: ELBO {summary['elbo']:.2f}, "
        f"log p-hat_{max(ks)} {summary['log_likelihood']:.2f} nats/image, gap {summary['gap']:.2f} "
        f"+- {summary['gap_se']:.2f}; rate {summary['rate_nats']:.1f} / distortion "
        f"{summary['distortion_nats']:.1f} nats; prior sampling with {counts[-1]} draws falls "
        f"{summary['naive']['shortfall_vs_elbo']:.1f} nats below the ELBO. Wrote {path}"
    )
    return summary


if __name__ == "__main__":
    raise SystemExit(run_study(main))
