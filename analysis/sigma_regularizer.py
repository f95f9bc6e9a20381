r"""Section 2.4.3 measured: the sigma of a Gaussian P(X|z) acts as the VAE's regularization weight.

With P(X|z) = N(X | f(z), sigma^2 I) on grayscale MNIST (D = 784 pixels), the negative ELBO is

.. math::  -\mathrm{ELBO} = \frac{E_Q\|X - f(z)\|^2}{2\sigma^2} + KL(Q(z|X) \| P(z))
                             + D \log(\sqrt{2\pi}\sigma),

so, up to a constant and the factor 2 sigma^2, training minimizes E_Q||X - f(z)||^2 +
2 sigma^2 KL(Q(z|X) || P(z)): the sparse autoencoder's objective (Eq. 11) with lambda = 2 sigma^2.
A larger sigma should buy a smaller *rate* KL(Q(z|X) || P(z)) (fewer nats spent on z, fewer
active units) with a larger *distortion* E_Q||X - f(z)||^2 (blurrier reconstructions), and a
smaller sigma the reverse. The study trains one VAE per sigma (same seed, network and budget)
and, on the test images, measures

- the rate in closed form (Eq. 7), per image; the number of active units (Burda et al.'s
  Cov_x(E_q[z_u]) > 0.01) and the KL spent on inactive ones;
- the squared error E_Q||X - f(z)||^2 (sum over pixels, K draws z ~ Q(z|X) per image, f(z) the
  decoder mean) and ||X - f(mu(X))||^2; note that this is not the distortion -E_Q log P(X|z) in
  nats, which is also reported (with the ELBO);
- paired differences between neighbouring sigmas (same images), to say whether each step of the
  sweep moves rate and squared error in the predicted directions beyond the error bars.

The Bernoulli model (binarized MNIST, as in section 4.1) is the reference without a knob: its
reconstruction term -log P(X|z) and the KL are both code lengths in nats of the same binary
digit, so there is no free unit conversion between them. Its rate and squared error (decoder
probabilities against the grayscale digit) are drawn as horizontal lines.

Outputs in ``--out``: ``sigma_regularizer.json``; ``rate_distortion.png`` (rate, squared
error and active units against sigma, and the rate-distortion plane); ``samples_by_sigma.png``
(decoder means f(z) for the same z ~ N(0, I) in every model); ``reconstructions_by_sigma.png``
(the same test digits through every model); one run folder per model under ``runs/``.

Default budget (about 55 min single-threaded, 30 min with 2 threads, on a 2-core CPU): six
sigmas and the Bernoulli reference, the tutorial's network 784-1000-500-250-30 (decoder
mirrored), 20 epochs of the 50,000 training images, batch 100, Adam 1e-3, the tutorial's Eq. 10
objective (closed-form KL); evaluation on all 10,000 test images with K = 10 draws per image.

    python -m analysis.sigma_regularizer --out results/sigma_regularizer
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from pyro_vae.builders import RunConfig, VAEConfig
from pyro_vae.data import load_mnist
from pyro_vae.evaluation import ACTIVITY_THRESHOLD, latent_statistics
from pyro_vae.plotting import image_grid
from pyro_vae.runs import load_eval_data, load_vae_run
from pyro_vae.train import seed_everything
from pyro_vae.vae import VAE

from . import common

NAME = "sigma_regularizer"
DEFAULT_SIGMAS = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8)
DEFAULT_EPOCHS = 20
BERNOULLI = "bernoulli"
#: Paired differences beyond this many standard errors count as a measured change.
NUM_SE = 3.0
NUM_FIGURE_SAMPLES = 64
NUM_FIGURE_DIGITS = 10

NO_KNOB_NOTE = (
    "Bernoulli P(X|z) on binary X: -log P(X|z) is the number of nats needed to transmit the binary "
    "digit given z, and KL(Q(z|X) || P(z)) the nats needed to transmit z; both count the same "
    "information in the same unit, so the ELBO has no free weight between them (section 2.4.3). "
    "With a Gaussian, -log P(X|z) = ||X - f(z)||^2 / (2 sigma^2) + const: sigma converts squared "
    "error into nats and so sets the exchange rate between reconstruction and KL."
)


def run_label(sigma: float | None) -> str:
    return BERNOULLI if sigma is None else f"gaussian_sigma_{sigma:g}"


def run_config(sigma: float | None, args) -> RunConfig:
    """The Gaussian model with fixed ``sigma`` (grayscale data), or the Bernoulli one for ``None``."""
    model = VAEConfig(
        z_dim=args.z_dim,
        hidden_sizes=tuple(args.hidden),
        likelihood=BERNOULLI if sigma is None else "gaussian",
        sigma=1.0 if sigma is None else sigma,  # unused by the Bernoulli
    )
    return RunConfig(model=model, train=common.train_config(args))


@torch.no_grad()
def reconstruction_terms(
    vae: VAE, x: torch.Tensor, target: torch.Tensor, *, num_samples: int, batch_size: int = 500
) -> dict[str, torch.Tensor]:
    r"""Per-image reconstruction numbers, each ``(N,)`` float64.

    - ``squared_error``: E_{z~Q(z|x)} ||target - f(z)||^2, the sum over pixels, by ``num_samples``
      draws per image; f(z) is the decoder mean (sigmoid of its output for the Gaussian, the
      Bernoulli probabilities otherwise);
    - ``squared_error_at_mean``: ||target - f(mu(x))||^2, the reconstruction figures show;
    - ``distortion``: -E_Q log P(x | z) in nats, from the same draws.

    ``x`` is what the encoder and likelihood see (binary for the Bernoulli model), ``target`` the
    grayscale digit, so that every model's squared error is measured against the same images.
    """
    parts: dict[str, list[torch.Tensor]] = {
        "squared_error": [],
        "squared_error_at_mean": [],
        "distortion": [],
    }
    for start in range(0, x.shape[0], batch_size):
        x_batch, target_batch = x[start : start + batch_size], target[start : start + batch_size]
        posterior = vae.encoder(x_batch)
        z = posterior.sample((num_samples,))  # (K, B, z_dim)
        likelihood = vae.decoder(z)  # batch (K, B), event (D,)
        parts["squared_error"].append((target_batch - likelihood.mean).pow(2).sum(-1).double().mean(0))
        parts["distortion"].append(-likelihood.log_prob(x_batch).double().mean(0))
        at_mean = vae.decoder(posterior.mean).mean
        parts["squared_error_at_mean"].append((target_batch - at_mean).pow(2).sum(-1).double())
    return {key: torch.cat(values) for key, values in parts.items()}


def evaluate_model(
    vae: VAE, x: torch.Tensor, target: torch.Tensor, *, num_samples: int, seed: int
) -> dict[str, torch.Tensor | Any]:
    """Per-image rate, squared errors, distortion and ELBO, and the latent statistics of one model."""
    latents = latent_statistics(vae, x)
    seed_everything(seed)  # every model sees the same stream of noise for its z draws
    terms = reconstruction_terms(vae, x, target, num_samples=num_samples)
    terms["rate"] = latents.kl_per_datapoint
    terms["elbo"] = -(terms["distortion"] + terms["rate"])
    return {"per_image": terms, "latents": latents}


def summarize_model(label: str, sigma: float | None, evaluation: dict[str, Any]) -> dict[str, Any]:
    per_image, latents = evaluation["per_image"], evaluation["latents"]
    summary = {
        "label": label,
        "likelihood": BERNOULLI if sigma is None else "gaussian",
        "sigma": sigma,
        # the lambda of Eq. 11 that this sigma amounts to: ||X - f||^2 + 2 sigma^2 KL
        "regularization_weight": None if sigma is None else 2 * sigma**2,
        "active_units": latents.num_active(),
        "kl_of_inactive_units": latents.kl_of_inactive_units(),
        **{key: common.mean_se(values) for key, values in per_image.items()},
    }
    if sigma is not None:
        # Eq. 11's objective, per image: squared error + 2 sigma^2 rate (what training trades).
        summary["weighted_objective"] = common.mean_se(
            per_image["squared_error"] + 2 * sigma**2 * per_image["rate"]
        )
    summary["rate_bits"] = summary["rate"]["mean"] / math.log(2)
    summary["distortion_bits"] = summary["distortion"]["mean"] / math.log(2)
    return summary


def trade_off_steps(
    sigmas: list[float], per_image: dict[float, dict[str, torch.Tensor]]
) -> list[dict[str, Any]]:
    """Paired changes of rate and squared error from each sigma to the next larger one.

    A step confirms the trade-off when the rate falls and the squared error rises, each by more
    than :data:`NUM_SE` paired standard errors.
    """
    steps = []
    for small, large in zip(sigmas[:-1], sigmas[1:]):
        rate = common.paired_difference(per_image[large]["rate"], per_image[small]["rate"])
        error = common.paired_difference(per_image[large]["squared_error"], per_image[small]["squared_error"])
        steps.append(
            {
                "from_sigma": small,
                "to_sigma": large,
                "rate_change": rate,
                "squared_error_change": error,
                "rate_falls": rate["mean"] < -NUM_SE * rate["se"],
                "squared_error_rises": error["mean"] > NUM_SE * error["se"],
            }
        )
    return steps


def plot_trade_off(path: Path, rows: list[dict[str, Any]], bernoulli: dict[str, Any] | None) -> None:
    """Rate, squared error and active units against sigma (log x), and the rate-distortion plane."""
    gaussian = [r for r in rows if r["sigma"] is not None]
    sigmas = np.array([r["sigma"] for r in gaussian])
    fig = Figure(figsize=(10, 7.5))
    (ax_rate, ax_error), (ax_units, ax_plane) = fig.subplots(2, 2)
    panels = (
        (ax_rate, "rate", "KL(Q(z|X) || P(z))  (nats per image)"),
        (ax_error, "squared_error", "E_Q ||X - f(z)||^2  (per image)"),
    )
    for ax, key, ylabel in panels:
        ax.errorbar(
            sigmas,
            [r[key]["mean"] for r in gaussian],
            yerr=[r[key]["se"] for r in gaussian],
            marker="o",
            capsize=3,
            label="Gaussian P(X|z), fixed sigma",
        )
        if bernoulli is not None:
            ax.axhline(bernoulli[key]["mean"], color="C3", ls="--", label="Bernoulli (no sigma)")
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_rate.set_yscale("log")
    ax_units.plot(sigmas, [r["active_units"] for r in gaussian], marker="o")
    if bernoulli is not None:
        ax_units.axhline(bernoulli["active_units"], color="C3", ls="--", label="Bernoulli")
        ax_units.legend(fontsize=8)
    ax_units.set_xscale("log")
    ax_units.set_xlabel("sigma")
    ax_units.set_ylabel(f"active units (Cov_x E_q[z_u] > {ACTIVITY_THRESHOLD})")
    ax_units.grid(alpha=0.3)
    for ax in (ax_rate, ax_error, ax_units):
        # label the sweep's sigmas, not the log axis' minor ticks (they overlap within a decade)
        ax.set_xticks(sigmas, [f"{s:g}" for s in sigmas])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax_plane.plot(
        [r["rate"]["mean"] for r in gaussian], [r["squared_error"]["mean"] for r in gaussian], marker="o"
    )
    for i, r in enumerate(gaussian):
        ax_plane.annotate(
            f"sigma={r['sigma']:g}",
            (r["rate"]["mean"], r["squared_error"]["mean"]),
            textcoords="offset points",
            xytext=(4, 4 if i % 2 else -11),  # alternate sides: neighbours can nearly coincide
            fontsize=7,
        )
    if bernoulli is not None:
        ax_plane.plot(
            [bernoulli["rate"]["mean"]],
            [bernoulli["squared_error"]["mean"]],
            marker="*",
            ms=12,
            color="C3",
            ls="none",
            label="Bernoulli",
        )
        ax_plane.legend(fontsize=8)
    ax_plane.set_xscale("log")
    ax_plane.set_xlabel("rate KL(Q(z|X) || P(z))  (nats)")
    ax_plane.set_ylabel("squared error E_Q ||X - f(z)||^2")
    ax_plane.set_title("rate-distortion plane: sigma slides along it", fontsize=9)
    ax_plane.grid(alpha=0.3)
    fig.suptitle("section 2.4.3: sigma weighs reconstruction against KL (test images)", fontsize=10)
    common.save_figure(fig, path)


def plot_reconstruction_rows(
    path: Path, original: torch.Tensor, rows: list[tuple[str, torch.Tensor]]
) -> None:
    """One row of digits per model, below the originals: f(mu(x)) for the same test digits."""
    labels = ["test digit", *[label for label, _ in rows]]
    stacked = torch.cat([original, *[images for _, images in rows]])
    num_columns = original.shape[0]
    grid = image_grid(stacked, num_columns=num_columns)
    fig = Figure(figsize=(0.5 * num_columns + 1.8, 0.5 * len(labels) + 0.5))
    ax = fig.add_axes((0.2, 0.02, 0.78, 0.9))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    row_height = grid.shape[0] / len(labels)
    ax.set_yticks([(i + 0.5) * row_height for i in range(len(labels))], labels, fontsize=7)
    ax.set_xticks([])
    ax.set_title("reconstructions f(mu(x)) of the same test digits", fontsize=9)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.training_study_parser(
        NAME, __doc__.splitlines()[0], epochs=DEFAULT_EPOCHS, num_samples=10, eval_subset=0,
        num_samples_help="draws z ~ Q(z|X) per test image",
    )  # fmt: skip
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS))
    parser.add_argument("--no-bernoulli", action="store_true", help="skip the Bernoulli reference model")
    args, device = common.start_study(
        parser, argv, lambda args: common.check_positive("--sigmas", args.sigmas)
    )
    sigmas = sorted(set(args.sigmas))
    models: list[float | None] = [*sigmas, *([] if args.no_bernoulli else [None])]
    out = args.out
    started = time.perf_counter()
    eval_subset = args.eval_subset or None
    target = load_mnist("test", args.data_dir, subset=eval_subset, device=device).images
    figure_z = torch.randn(NUM_FIGURE_SAMPLES, args.z_dim, generator=torch.Generator().manual_seed(0))
    rows, per_image, samples, reconstructions = [], {}, [], []
    for sigma in models:
        label = run_label(sigma)
        config = run_config(sigma, args)
        run_dir = out / "runs" / label
        history = common.train_or_resume(
            config, run_dir, data_dir=args.data_dir, device=device, progress=not args.no_progress, label=label
        )
        eval_started = time.perf_counter()
        config, vae = load_vae_run(run_dir, device=device)
        (x,) = load_eval_data(config, "test", subset=eval_subset, data_dir=args.data_dir, device=device)
        evaluation = evaluate_model(vae, x, target, num_samples=args.num_samples, seed=config.train.eval_seed)
        summary = summarize_model(label, sigma, evaluation)
        summary.update(
            run_dir=str(run_dir),
            train_seconds=float(sum(history.epoch_seconds)),
            valid_elbo_by_epoch=history.valid_elbo,
            eval_seconds=time.perf_counter() - eval_started,
        )
        rows.append(summary)
        per_image[sigma] = evaluation["per_image"]
        title = "Bernoulli" if sigma is None else f"sigma = {sigma:g}"
        samples.append((title, vae.sample_images(NUM_FIGURE_SAMPLES, z=figure_z.to(device))))
        reconstructions.append((title, vae.reconstruct(x[:NUM_FIGURE_DIGITS])))
        print(
            f"[{label}] rate {summary['rate']['mean']:.2f} nats, E||X - f(z)||^2 "
            f"{summary['squared_error']['mean']:.2f}, active units {summary['active_units']}",
            flush=True,
        )

    bernoulli = next((r for r in rows if r["sigma"] is None), None)
    steps = trade_off_steps(sigmas, per_image)
    results = {
        "budget": common.training_budget(args, z_dim=str(args.z_dim), eval_images=int(target.shape[0])),
        "sigmas": sigmas,
        "models": rows,
        "trade_off_steps": steps,
        "trade_off_confirmed": bool(steps)
        and all(s["rate_falls"] and s["squared_error_rises"] for s in steps),
        "bernoulli_note": NO_KNOB_NOTE,
        "seconds": time.perf_counter() - started,
    }
    plot_trade_off(out / "rate_distortion.png", rows, bernoulli)
    common.save_image_panels(
        out / "samples_by_sigma.png",
        samples,
        title="decoder means f(z) for the same z ~ N(0, I) in every model",
    )
    plot_reconstruction_rows(
        out / "reconstructions_by_sigma.png", target[:NUM_FIGURE_DIGITS], reconstructions
    )
    path = common.write_results(out, NAME, results)
    described = [
        f"{r['label']}: rate {r['rate']['mean']:.1f} nats, sq. error {r['squared_error']['mean']:.1f}"
        for r in rows
    ]
    print(
        "; ".join(described)
        + f". Trade-off confirmed at every step: {results['trade_off_confirmed']}. Wrote {path}"
    )
    return results


if __name__ == "__main__":
    raise SystemExit(common.run_study(main))
