r"""Section 4.1 measured: how the VAE's quality depends on the number of latent dimensions.

The tutorial reports that "the model seems to be quite insensitive to the dimensionality of z,
unless z is excessively large or small": fewer than 4 dimensions gave noticeably worse results,
1,000 were good and 10,000 degraded, because "stochastic gradient descent struggles to keep
D[Q(z|X) || P(z)] low when z is extremely large". The study trains the tutorial's MNIST VAE
(Bernoulli likelihood on dynamically binarized digits, encoder 784-1000-500-250, decoder
mirrored) once per latent size with the same seed and budget and measures, on the same
binarized test images,

- the test ELBO and the importance-sampled log-likelihood log p-hat_K(x) (K particles from
  Q(z|X)), with standard errors over images, and paired differences between latent sizes;
- the number of active units, A_u = Cov_x(E_{q(z|x)}[z_u]) > 0.01 (Burda, Grosse &
  Salakhutdinov, 2016), over all 10,000 test images;
- the rate KL(Q(z|X) || P(z)) in closed form, on the scored images and on all test images, and
  the part of the latter on inactive units: the tutorial explains the degradation at 10,000
  dimensions by KL that SGD fails to remove (that part bounds such waste from above: many
  "inactive" units can together carry a thinly spread code).

The three claims are judged with one stated rule: a model is *noticeably worse* than another
when its mean log p-hat(x) is lower by more than :data:`NOTICEABLE_NATS` nat per image and by
more than 3 paired standard errors. "Fewer than 4 is worse": z = 1, 2, 3 each noticeably worse
than z = 4. "1,000 is good": z = 1000 not noticeably worse than the best latent size. "10,000
degrades": z = 10000 noticeably worse than z = 1000.

The 10,000-dimensional model has a 250 x 20,000 encoder output layer and a 10,000 x 250 decoder
input layer (7.5 M weights, small); its importance sampling holds K x B x 10,000 numbers per
chunk of particles, so particles are processed in chunks of :func:`chunk_size_for` (about 80 MB
per tensor). It costs about 5x a 30-dimensional model per epoch and 12x to evaluate.

Outputs in ``--out``: ``latent_dim.json``; ``latent_dim.png`` (ELBO and log p-hat against z,
active units, rate and the KL of inactive units); ``elbo_curves.png`` (validation ELBO per
epoch); ``samples_by_z.png`` (decoder means f(z), z ~ N(0, I)); one run folder per z under
``runs/``.

Default budget (about 100 min single-threaded, about an hour with 2 threads, on a 2-core CPU;
the 10,000-dimensional model takes 45 min of it): z in {1, 2, 3, 4, 8, 16, 30, 100, 1000,
10000}, every model 15 epochs of the 50,000 training images (the same for all, so the
comparison is at a matched budget; none is converged: the tutorial trained "to completion"),
batch 100, Adam 1e-3, the tutorial's Eq. 10 objective (closed-form KL); K = 1000 particles on
the first 1,000 test images.

    python -m analysis.latent_dim --out results/latent_dim
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.builders import RunConfig, VAEConfig
from pyro_vae.estimators import DEFAULT_PAIRS_PER_CHUNK
from pyro_vae.evaluation import ACTIVITY_THRESHOLD, latent_statistics
from pyro_vae.runs import load_eval_data

from . import common

NAME = "latent_dim"
DEFAULT_Z_DIMS = (1, 2, 3, 4, 8, 16, 30, 100, 1000, 10000)
DEFAULT_EPOCHS = 15
#: Numbers held by one (particles, images, z_dim) tensor of an importance-sampling chunk: 80 MB.
LATENT_NUMBERS_PER_CHUNK = 20_000_000
#: "Noticeably worse": lower mean log p-hat(x) by more than this (nats per image) and NUM_SE se.
NOTICEABLE_NATS = 1.0
NUM_SE = 3.0
NUM_FIGURE_SAMPLES = 64
IS_BATCH_SIZE = 100


def chunk_size_for(z_dim: int, batch_size: int = IS_BATCH_SIZE) -> int:
    """Particles per vectorized pass so that a ``(chunk, batch, z_dim)`` tensor holds at most
    :data:`LATENT_NUMBERS_PER_CHUNK` numbers (and the decoder's activations the estimator's usual
    :data:`~pyro_vae.estimators.DEFAULT_PAIRS_PER_CHUNK` pairs)."""
    pairs = min(DEFAULT_PAIRS_PER_CHUNK, LATENT_NUMBERS_PER_CHUNK // z_dim)
    return max(1, pairs // batch_size)


def run_label(z_dim: int) -> str:
    return f"z_{z_dim}"


def run_config(z_dim: int, args) -> RunConfig:
    """The tutorial's MNIST VAE (section 4.1) with ``z_dim`` latent dimensions."""
    return RunConfig(
        model=VAEConfig(z_dim=z_dim, hidden_sizes=tuple(args.hidden)), train=common.train_config(args)
    )


def noticeably_worse(difference: dict[str, float]) -> bool:
    """A paired difference (model minus comparison) counts as noticeably worse by the stated rule."""
    return difference["mean"] < -NOTICEABLE_NATS and difference["mean"] < -NUM_SE * difference["se"]


def judge_claims(z_dims: list[int], per_image: dict[int, torch.Tensor]) -> dict[str, Any]:
    """The tutorial's three statements about z (section 4.1), each with its paired differences.

    ``per_image`` maps each z to its per-image log p-hat(x) on the same test images. A claim whose
    latent sizes were not all trained is reported as not measured (``confirmed`` is ``None``).
    """
    means = {z: float(values.double().mean()) for z, values in per_image.items()}
    best = max(means, key=means.get)

    def versus(z: int, other: int) -> dict[str, Any]:
        difference = common.paired_difference(per_image[z], per_image[other])
        return {"z": z, "versus": other, **difference, "noticeably_worse": noticeably_worse(difference)}

    small = [z for z in z_dims if z < 4]
    claims: dict[str, Any] = {"rule": (
        f"noticeably worse = mean log p-hat(x) lower by > {NOTICEABLE_NATS:g} nat/image and by > "
        f"{NUM_SE:g} paired standard errors on the same test images"
    ), "best_z": best}  # fmt: skip
    if small and 4 in per_image:
        rows = [versus(z, 4) for z in small]
        claims["fewer_than_4_noticeably_worse"] = {
            "comparisons": rows,
            "confirmed": all(r["noticeably_worse"] for r in rows),
        }
    else:
        claims["fewer_than_4_noticeably_worse"] = {"confirmed": None, "why": "needs z = 4 and some z < 4"}
    if 1000 in per_image:
        row = versus(1000, best) if best != 1000 else {"z": 1000, "versus": 1000, "noticeably_worse": False}
        claims["1000_good"] = {"comparison": row, "confirmed": not row["noticeably_worse"]}
    else:
        claims["1000_good"] = {"confirmed": None, "why": "needs z = 1000"}
    if 1000 in per_image and 10000 in per_image:
        row = versus(10000, 1000)
        claims["10000_degraded"] = {"comparison": row, "confirmed": row["noticeably_worse"]}
    else:
        claims["10000_degraded"] = {"confirmed": None, "why": "needs z = 1000 and z = 10000"}
    return claims


def plot_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    z = np.array([r["z_dim"] for r in rows])
    fig = Figure(figsize=(13, 4.2))
    ax_lik, ax_units, ax_rate = fig.subplots(1, 3)
    for key, name in (("elbo", "ELBO"), ("log_likelihood", "IS log p-hat(x)")):
        ax_lik.errorbar(
            z,
            [r[key]["mean"] for r in rows],
            yerr=[r[key]["se"] for r in rows],
            marker="o",
            capsize=3,
            label=name,
        )
    ax_lik.set_ylabel("nats per test image (bars: se over images)")
    ax_lik.legend(fontsize=8)
    ax_units.plot(z, [r["active_units"] for r in rows], marker="o", label="active units")
    ax_units.plot(z, z, color="k", lw=0.8, ls=":", label="all units")
    ax_units.set_yscale("log")
    ax_units.set_ylabel(f"units with Cov_x E_q[z_u] > {ACTIVITY_THRESHOLD}")
    ax_units.legend(fontsize=8)
    # both on all test images: the activity criterion needs them, and so the two curves compare
    ax_rate.plot(z, [r["rate_all_images"] for r in rows], marker="o", label="rate KL(Q(z|X) || P(z))")
    ax_rate.plot(z, [r["kl_of_inactive_units"] for r in rows], marker="s", label="KL of inactive units")
    ax_rate.set_yscale("symlog", linthresh=0.1)
    ax_rate.set_ylabel("nats per test image (all 10,000)")
    ax_rate.legend(fontsize=8)
    for ax in (ax_lik, ax_units, ax_rate):
        ax.set_xscale("log")
        ax.set_xlabel("latent dimensions z")
        ax.grid(alpha=0.3)
    fig.suptitle(
        "section 4.1: quality against the number of latent dimensions (same budget for all)", fontsize=10
    )
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.training_study_parser(
        NAME, __doc__.splitlines()[0], epochs=DEFAULT_EPOCHS, z_dim=False, num_samples=1000,
        eval_subset=1000, num_samples_help="K for the IS log p(x)",
    )  # fmt: skip
    parser.add_argument("--z-dims", type=int, nargs="+", default=list(DEFAULT_Z_DIMS))
    args, device = common.start_study(
        parser, argv, lambda args: common.check_positive("--z-dims", args.z_dims)
    )
    z_dims = sorted(set(args.z_dims))
    out = args.out
    started = time.perf_counter()
    rows, per_image, samples = [], {}, []
    for z_dim in z_dims:
        label = run_label(z_dim)
        run_dir = out / "runs" / label
        scored = common.train_and_score(
            run_config(z_dim, args),
            run_dir,
            args,
            device=device,
            label=label,
            chunk_size=chunk_size_for(z_dim),
            batch_size=IS_BATCH_SIZE,
        )
        config, vae, summary, report = scored.config, scored.vae, scored.summary, scored.report
        (x_eval,) = scored.data
        (x_all,) = load_eval_data(config, "test", data_dir=args.data_dir, device=device)
        activity = latent_statistics(vae, x_all)  # units: over all test images
        rate = latent_statistics(vae, x_eval).kl_per_datapoint  # per image: the scored images
        per_image[z_dim] = summary.log_likelihood
        rows.append(
            {
                "z_dim": z_dim,
                "elbo": common.mean_se(summary.elbo),
                "log_likelihood": common.mean_se(summary.log_likelihood),
                "log_likelihood_mc_se": report["log_likelihood_se"],
                "gap": common.mean_se(summary.gap),
                "rate": common.mean_se(rate),
                "distortion": common.mean_se(summary.distortion),
                "active_units": activity.num_active(),
                "rate_all_images": float(activity.kl_per_datapoint.mean()),
                "kl_of_inactive_units": activity.kl_of_inactive_units(),
                "ess_fraction": report["ess_fraction"],
                "khat_over_0_7": report["khat_over_0_7"],
                "valid_elbo_by_epoch": scored.history.valid_elbo,
                "train_seconds": float(sum(scored.history.epoch_seconds)),
                "eval_seconds": scored.eval_seconds,
                "chunk_size": chunk_size_for(z_dim),
                "run_dir": str(run_dir),
            }
        )
        z = torch.randn(NUM_FIGURE_SAMPLES, z_dim, generator=torch.Generator().manual_seed(0))
        samples.append((f"z = {z_dim}", vae.sample_images(NUM_FIGURE_SAMPLES, z=z.to(device))))
        print(
            f"[{label}] test ELBO {rows[-1]['elbo']['mean']:.2f}, log p-hat_{args.num_samples} "
            f"{rows[-1]['log_likelihood']['mean']:.2f} nats/image, {rows[-1]['active_units']} active units, "
            f"KL of inactive units {rows[-1]['kl_of_inactive_units']:.2f} nats",
            flush=True,
        )

    best = max(per_image, key=lambda z: float(per_image[z].double().mean()))
    for row in rows:
        row["log_likelihood_minus_best"] = common.paired_difference(per_image[row["z_dim"]], per_image[best])
    claims = judge_claims(z_dims, per_image)
    results = {
        "budget": {
            **common.training_budget(args, z_dim="z", eval_images=int(x_eval.shape[0])),
            "likelihood": "bernoulli (dynamic binarization; one fixed binarization for evaluation)",
            "activity_images": int(x_all.shape[0]),
            "weights": "best validation epoch",
        },
        "z_dims": z_dims,
        "models": rows,
        "claims": claims,
        "seconds": time.perf_counter() - started,
    }
    plot_summary(out / "latent_dim.png", rows)
    lowest_final = min(r["valid_elbo_by_epoch"][-1] for r in rows)
    common.plot_validation_curves(
        out / "elbo_curves.png", {f"z = {r['z_dim']}": r["valid_elbo_by_epoch"] for r in rows},
        bottom=lowest_final - 20, size=(6.5, 4.2), legend_columns=2,
    )  # fmt: skip
    common.save_image_panels(out / "samples_by_z.png", samples, title="decoder means f(z), z ~ N(0, I)")
    path = common.write_results(out, NAME, results)
    verdicts = ", ".join(
        f"{name}: {claims[name]['confirmed']}"
        for name in ("fewer_than_4_noticeably_worse", "1000_good", "10000_degraded")
    )
    print(f"best z = {best}; claims confirmed? {verdicts}. Wrote {path}")
    return results


if __name__ == "__main__":
    raise SystemExit(common.run_study(main))
