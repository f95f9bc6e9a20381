r"""CVAE against the regressor on the tutorial's digit completion (sections 3 and 5, Fig. 8).

X is the middle column of a test digit, binarized stochastically; Y the other 27 columns. P(Y|X)
is multimodal (one column fits many digits), so the tutorial expects a regressor to blur between
the candidates while CVAE samples pick one digit and stay sharp. This study measures that:

- **fair likelihoods**: test-set log P(Y|X) per image, the CVAE's by importance sampling with
  Q(z|Y, X) as proposal (K particles) beside its ELBO, the regressor's exact; both on the same
  binarized digits (one evaluation seed); the paired difference with its standard error. Both
  runs are loaded at their best validation epoch (model selection on the validation split only);
- **Fig. 8** (``figure8.png``): CVAE samples, the regressor's output and the ground truth for the
  same test digits, the input column drawn in orange (1) and blue (0);
- **sharpness and diversity**: mean |p - 0.5| of the output probabilities (how decided each pixel
  is), the mean pairwise distance between CVAE samples for one input, and how confidently a digit
  classifier trained on MNIST (its test accuracy reported) labels CVAE samples, regressor outputs
  and the ground truth.

    python -m analysis.cvae_vs_regressor --cvae runs/cvae --regressor runs/regressor --out results/cvae
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.data import load_mnist, merge_column, split_column
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import evaluate_importance_sampling
from pyro_vae.plotting import save_completion_figure
from pyro_vae.runs import load_eval_data, load_run
from pyro_vae.train import resolve_device, seed_everything

from .classifier import train_digit_classifier
from .common import cost_of, mean_se, run_study, save_figure, study_parser, write_results

NAME = "cvae_vs_regressor"


def sharpness(probabilities: torch.Tensor) -> float:
    """Mean |p - 1/2| over pixels: 0 for a uniform blur, 1/2 for a fully decided binary image."""
    return float((probabilities - 0.5).abs().mean())


def mean_pairwise_distance(samples: torch.Tensor) -> float:
    """Mean Euclidean distance between the S completions of each input, ``samples`` ``(S, B, D)``."""
    num = samples.shape[0]
    if num < 2:
        return 0.0
    distances = torch.cdist(samples.transpose(0, 1), samples.transpose(0, 1))  # (B, S, S)
    return float(distances.sum((1, 2)).mean() / (num * (num - 1)))


def classifier_report(classifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-class probability, entropy (nats), agreement with the label; images ``(..., B, 784)``."""
    probs = classifier.probabilities(images)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return {
        "confidence": float(probs.max(-1).values.mean()),
        "entropy": float(entropy.mean()),
        "agreement_with_label": float((probs.argmax(-1) == labels).float().mean()),
    }


def plot_likelihoods(
    path: Path, cvae_log_lik: np.ndarray, cvae_elbo: np.ndarray, regressor: np.ndarray
) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    bins = np.linspace(min(cvae_elbo.min(), regressor.min()), max(cvae_log_lik.max(), regressor.max()), 50)
    ax.hist(regressor, bins=bins, alpha=0.5, label=f"regressor (exact): {regressor.mean():.2f}")
    ax.hist(cvae_log_lik, bins=bins, alpha=0.5, label=f"CVAE (IS): {cvae_log_lik.mean():.2f}")
    ax.hist(cvae_elbo, bins=bins, histtype="step", color="k", label=f"CVAE ELBO: {cvae_elbo.mean():.2f}")
    ax.set_xlabel("log P(Y|X) per test image (nats)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = study_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--cvae", type=Path, required=True, help="run folder of 'pyro-vae train cvae'")
    parser.add_argument(
        "--regressor", type=Path, required=True, help="run folder of 'pyro-vae train regressor'"
    )
    parser.add_argument("--num-samples", "-k", type=int, default=1000, help="K for the CVAE's IS estimate")
    parser.add_argument("--subset", type=int, default=2000, help="test images scored (default 2000; 0: all)")
    parser.add_argument("--figure-digits", type=int, default=10)
    parser.add_argument("--diversity-samples", type=int, default=10, help="CVAE samples per input")
    parser.add_argument("--classifier-epochs", type=int, default=5)
    parser.add_argument(
        "--classifier-subset", type=int, default=None, help="training images for the classifier"
    )
    parser.add_argument(
        "--eval-seed", type=int, default=None, help="binarization seed (default: the CVAE run's)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        raise ConfigError("--num-samples must be >= 1")

    device = resolve_device(args.device)
    cvae_config, cvae = load_run(args.cvae, device=device, kinds=("cvae",))
    regressor_config, regressor = load_run(args.regressor, device=device, kinds=("regressor",))
    if cvae_config.model.column != regressor_config.model.column:
        raise ConfigError(
            f"the runs condition on different columns ({cvae_config.model.column} and "
            f"{regressor_config.model.column}); train both with the same --column"
        )
    column = cvae_config.model.column
    eval_seed = cvae_config.train.eval_seed if args.eval_seed is None else args.eval_seed
    shared = type(cvae_config.train)(**{**cvae_config.train.to_dict(), "eval_seed": eval_seed})
    data_config = type(cvae_config)(kind="cvae", model=cvae_config.model, train=shared)
    x, y = load_eval_data(
        data_config, "test", subset=args.subset or None, data_dir=args.data_dir, device=device
    )
    started = time.perf_counter()

    # 1. Fair likelihoods on the same binarized digits.
    seed_everything(eval_seed)
    cvae_summary = evaluate_importance_sampling(
        cvae, (x, y), num_samples=args.num_samples, batch_size=args.batch_size, progress=not args.no_progress
    )
    regressor_summary = evaluate_importance_sampling(
        regressor, (x, y), num_samples=1, compute_khat=False, batch_size=args.batch_size, progress=False
    )
    difference = cvae_summary.log_likelihood - regressor_summary.log_likelihood
    likelihoods = {
        "num_images": int(x.shape[0]),
        "num_samples": args.num_samples,
        "cvae_log_likelihood": mean_se(cvae_summary.log_likelihood),
        "cvae_log_likelihood_mc_se": float(
            cvae_summary.log_likelihood_se.double().nan_to_num(0).pow(2).sum().sqrt() / x.shape[0]
        ),
        "cvae_elbo": mean_se(cvae_summary.elbo),
        "cvae_gap": mean_se(cvae_summary.gap),
        "cvae_rate": float(cvae_summary.rate.mean()),
        "cvae_khat_over_0_7": float((cvae_summary.khat > 0.7).float().mean()),
        "cvae_ess_fraction": float(cvae_summary.ess.mean() / args.num_samples),
        "regressor_log_likelihood": mean_se(regressor_summary.log_likelihood),
        "cvae_minus_regressor": mean_se(difference),
        "cvae_better_fraction": float((difference > 0).float().mean()),
    }

    # 2. Completions of the same inputs: Fig. 8, sharpness, diversity.
    torch.manual_seed(eval_seed)
    num_figure = min(args.figure_digits, x.shape[0])
    cvae_samples = cvae.complete(x[: max(num_figure, 200)], args.diversity_samples)  # (S, B, 756)
    regressor_out = regressor.complete(x[: max(num_figure, 200)], 1)[0]  # (B, 756)
    intensities = load_mnist("test", args.data_dir, subset=cvae_samples.shape[1], device=device)
    truth_y = split_column(intensities.images, column)[1]
    rows = [
        (f"CVAE sample {s + 1}", cvae_samples[s, :num_figure]) for s in range(min(3, args.diversity_samples))
    ]
    rows += [("regressor", regressor_out[:num_figure]), ("ground truth", truth_y[:num_figure])]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    save_completion_figure(
        out / "figure8.png",
        x[:num_figure],
        rows,
        column,
        title="Fig. 8: completions from the binarized middle column (orange 1, blue 0)",
    )
    plot_likelihoods(
        out / "likelihoods.png",
        cvae_summary.log_likelihood.numpy(),
        cvae_summary.elbo.numpy(),
        regressor_summary.log_likelihood.numpy(),
    )

    classifier = train_digit_classifier(
        epochs=args.classifier_epochs, subset=args.classifier_subset, data_dir=args.data_dir, device=device
    )
    labels = intensities.labels
    x_shown = x[: cvae_samples.shape[1]]
    completions = {
        "sharpness": {
            "cvae": sharpness(cvae_samples),
            "regressor": sharpness(regressor_out),
            "ground_truth": sharpness(truth_y),
        },
        "diversity": {
            "cvae": mean_pairwise_distance(cvae_samples),
            "regressor": 0.0,
            "num_inputs": int(cvae_samples.shape[1]),
            "samples_per_input": args.diversity_samples,
        },
        "classifier": {
            "test_accuracy_grayscale": classifier.accuracy_grayscale,
            "test_accuracy_binarized": classifier.accuracy_binarized,
            "cvae": classifier_report(classifier, merge_column(x_shown, cvae_samples, column), labels),
            "regressor": classifier_report(classifier, merge_column(x_shown, regressor_out, column), labels),
            "ground_truth": classifier_report(classifier, intensities.images, labels),
        },
    }
    results = {
        "cvae_run": str(args.cvae),
        "regressor_run": str(args.regressor),
        "column": column,
        "eval_seed": eval_seed,
        "likelihoods": likelihoods,
        "completions": completions,
        "seconds": time.perf_counter() - started,
        "cost": cost_of(args.cvae, args.regressor, eval_seconds=time.perf_counter() - started),
    }
    path = write_results(out, NAME, results)
    lik = likelihoods
    print(
        f"log P(Y|X) on {lik['num_images']} test digits: CVAE {lik['cvae_log_likelihood']['mean']:.2f} "
        f"(IS, K={args.num_samples}; ELBO {lik['cvae_elbo']['mean']:.2f}), regressor "
        f"{lik['regressor_log_likelihood']['mean']:.2f} (exact); difference "
        f"{lik['cvae_minus_regressor']['mean']:+.2f} +- {lik['cvae_minus_regressor']['se']:.2f} nats. "
        f"Sharpness CVAE {completions['sharpness']['cvae']:.3f} vs regressor "
        f"{completions['sharpness']['regressor']:.3f}; classifier confidence "
        f"{completions['classifier']['cvae']['confidence']:.3f} vs "
        f"{completions['classifier']['regressor']['confidence']:.3f}. Wrote {path}"
    )
    return results


if __name__ == "__main__":
    raise SystemExit(run_study(main))
