r"""Where the ELBO's gap comes from: the guide family (approximation) or the encoder (amortization).

The tutorial's Eq. 5 says the ELBO falls short of log P(X) by KL(Q(z|X) || P(z|X)). Cremer, Li &
Duvenaud (2018, "Inference Suboptimality in Variational Autoencoders") split that gap with q*, the
best member of the guide's family for each image (:mod:`pyro_vae.local_inference`):

.. math::  \log p(x) - \mathcal{L}[q] = \big(\log p(x) - \mathcal{L}[q^*]\big)
           + \big(\mathcal{L}[q^*] - \mathcal{L}[q]\big),

the *approximation gap* (what no member of the family can close) and the *amortization gap*
(what the encoder leaves by not finding q* from x in one pass). For each run and each of the
first ``--num-images`` test images this study

1. scores the amortized guide with K = ``--num-samples`` particles: L[q] and an IS estimate;
2. optimizes that image's local guide parameters lambda with the decoder frozen (Adam from
   lambda(x), the step size divided by 10 on plateaus) and scores q* the same way: L[q*];
3. takes as log p-hat the larger of the two importance-sampling estimates (q and q* as
   proposals, K particles each). Each is a stochastic lower bound on log p(x) that tightens
   with K; the larger one is the better proposal's. (Averaging the two estimates of p(x) would
   stay unbiased but lose up to log 2 nats where one proposal is poor, which is the amortized
   one exactly where the amortization gap is large.) Since log p-hat_q* >= L[q*] on the same
   draws, the approximation gap is never negative.

The two gaps then add up to log p-hat - L[q] image by image. ``--refit GUIDE`` also trains a
fresh encoder of another family (for example ``iaf``) on the first run's frozen decoder and
splits its gap: does a richer family narrow the approximation gap of the same generative model?
Writes ``inference_gap.json`` (``rows``) and ``inference_gap.png``.

    python -m analysis.inference_gap RUNS/gaussian RUNS/iaf --refit iaf --refit-dir RUNS/refit-iaf \
        --out docs/results --figure docs/figures/inference_gap.png
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

from pyro_vae.builders import RunConfig, build_model
from pyro_vae.checkpoint import CHECKPOINT_NAME
from pyro_vae.local_inference import optimize_local_parameters, score_guide
from pyro_vae.runs import load_eval_data, load_run, load_training_data, read_run_history
from pyro_vae.train import resolve_device, seed_everything, train

from .common import mean_se, run_study, save_figure, study_parser, write_results

NAME = "inference_gap"
QUANTITIES = ("log_likelihood", "elbo_amortized", "elbo_optimized", "approximation_gap", "amortization_gap")
PROPOSALS = ("log_likelihood_amortized_proposal", "log_likelihood_optimized_proposal")


def split_gap(
    model: torch.nn.Module, images: torch.Tensor, *, num_samples: int, batch_size: int, seed: int,
    optimizer_options: dict[str, Any],
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per-image log p-hat, L[q], L[q*] and the optimizer's steps, in batches of ``batch_size``."""
    columns: dict[str, list[torch.Tensor]] = {key: [] for key in (*QUANTITIES[:3], *PROPOSALS)}
    steps = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        seed_everything(seed + start)
        amortized = score_guide(model, x, num_samples=num_samples)
        optimum = optimize_local_parameters(model, x, seed=seed + start, **optimizer_options)
        optimized = score_guide(model, x, optimum.params, num_samples=num_samples)
        columns["log_likelihood_amortized_proposal"].append(amortized.log_likelihood.double())
        columns["log_likelihood_optimized_proposal"].append(optimized.log_likelihood.double())
        columns["log_likelihood"].append(
            torch.maximum(amortized.log_likelihood, optimized.log_likelihood).double()
        )
        columns["elbo_amortized"].append(amortized.elbo.double())
        columns["elbo_optimized"].append(optimized.elbo.double())
        steps.append(optimum.steps)
    per_image = {key: torch.cat(values).cpu() for key, values in columns.items()}
    per_image["approximation_gap"] = per_image["log_likelihood"] - per_image["elbo_optimized"]
    per_image["amortization_gap"] = per_image["elbo_optimized"] - per_image["elbo_amortized"]
    per_image["optimizer_steps"] = torch.tensor(steps, dtype=torch.float64)
    return per_image


def summarize(run: str, guide: str, per_image: dict[str, torch.Tensor], **extra: Any) -> dict[str, Any]:
    """One row: each quantity's mean over images with its standard error (sd / sqrt(N))."""
    row: dict[str, Any] = {"run": run, "guide": guide}
    for key in (
        "log_likelihood",
        "elbo_amortized",
        "elbo_optimized",
        "approximation_gap",
        "amortization_gap",
    ):
        stats = mean_se(per_image[key])
        row[key], row[f"{key}_se"] = stats["mean"], stats["se"]
    row["total_gap"] = row["approximation_gap"] + row["amortization_gap"]
    row["num_images"] = int(per_image["log_likelihood"].numel())
    row["optimizer_steps_mean"] = float(per_image["optimizer_steps"].mean())
    return {**row, **extra}


def refit_guide(
    run_dir: Path, guide: str, out_dir: Path, *, epochs: int, flow_layers: int, device: torch.device,
    data_dir: Path | None, progress: bool,
) -> tuple[RunConfig, torch.nn.Module]:  # fmt: skip
    """Train a fresh ``guide`` encoder on the frozen decoder and prior of ``run_dir`` (resumable).

    The run's own recipe (batch size, learning rate, data split, Eq. 10) is kept, with the
    learning rate decayed by a cosine over ``epochs`` epochs; the folder ``out_dir`` is a run
    folder that every loader reads (its weights hold the trained decoder too).
    """
    source_config, source = load_run(run_dir, device=device)
    config = RunConfig(
        kind="vae",
        model=replace(source_config.model, guide=guide, flow_layers=flow_layers),
        train=replace(source_config.train, epochs=epochs, lr_schedule="cosine", objective="meanfield"),
    )
    seed_everything(config.train.seed)
    model = build_model(config).to(device)
    model.decoder.load_state_dict(source.decoder.state_dict())
    model.prior.load_state_dict(source.prior.state_dict())
    for network in (model.decoder, model.prior):
        network.requires_grad_(False)
    train_data, valid_args, transform = load_training_data(config, data_dir=data_dir, device=device)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        # pyro.module announces that it leaves the frozen decoder out of the store: intended here.
        warnings.filterwarnings(
            "ignore", message=".*was not registered in the param store", category=UserWarning
        )
        train(
            model, train_data, valid_args, config.train, batch_transform=transform, device=device,
            run_dir=out_dir, config=config.to_dict(), resume=(out_dir / CHECKPOINT_NAME).exists(),
            clear_param_store=False, progress=progress,
        )  # fmt: skip
    return load_run(out_dir, device=device)


def training_seconds(run_dir: Path) -> float:
    """The epoch time of a run (for a refit, the encoder's training on the frozen decoder)."""
    return float(sum(read_run_history(run_dir).epoch_seconds))


def plot_gaps(rows: list[dict[str, Any]], path: Path) -> None:
    """Stacked bars: approximation gap below, amortization gap above, with standard errors."""
    fig = Figure(figsize=(1.8 + 1.6 * len(rows), 3.8))
    axis = fig.subplots()
    labels = [f"{r['label']}" for r in rows]
    where = np.arange(len(rows))
    approximation = [r["approximation_gap"] for r in rows]
    amortization = [r["amortization_gap"] for r in rows]
    axis.bar(where, approximation, 0.6, yerr=[r["approximation_gap_se"] for r in rows], label="approximation")
    axis.bar(where, amortization, 0.6, bottom=approximation, yerr=[r["amortization_gap_se"] for r in rows],
             label="amortization")  # fmt: skip
    axis.set_xticks(where, labels, fontsize=8)
    axis.set_ylabel("nats per image")
    axis.set_title("log p(x) - ELBO, split (Cremer et al., 2018)", fontsize=9)
    axis.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = study_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="VAE run folders (any guide family)")
    parser.add_argument("--num-images", type=int, default=1000, help="first N test images (default 1000)")
    parser.add_argument("--num-samples", "-k", type=int, default=5000, help="K particles (default 5000)")
    parser.add_argument("--batch-size", type=int, default=100, help="images optimized together")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's initial step size on lambda")
    parser.add_argument("--max-steps", type=int, default=5000, help="most optimizer steps per batch")
    parser.add_argument("--particles", type=int, default=10, help="z draws per image and step")
    parser.add_argument(
        "--refit", help="also train a fresh encoder of this family on the first run's decoder"
    )
    parser.add_argument("--refit-epochs", type=int, default=100, help="epochs of the refit encoder")
    parser.add_argument("--flow-layers", type=int, default=2, help="iaf: transforms of the refit encoder")
    parser.add_argument("--refit-dir", type=Path, help="run folder of the refit (default OUT/refit-GUIDE)")
    parser.add_argument("--figure", type=Path, help="PNG of the split (default OUT/inference_gap.png)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    optimizer_options = {"lr": args.lr, "max_steps": args.max_steps, "num_particles": args.particles}
    invocation_started = time.perf_counter()
    models = []
    for run_dir in args.runs:
        config, model = load_run(run_dir, device=device, kinds=("vae",))
        models.append((str(run_dir), config, model, f"{run_dir.name} ({config.model.guide})"))
    if args.refit:
        refit_dir = args.refit_dir or args.out / f"refit-{args.refit}"
        config, model = refit_guide(
            args.runs[0], args.refit, refit_dir, epochs=args.refit_epochs, flow_layers=args.flow_layers,
            device=device, data_dir=args.data_dir, progress=not args.no_progress,
        )  # fmt: skip
        models.append((str(refit_dir), config, model, f"{args.runs[0].name} decoder, {args.refit} refit"))
    rows = []
    for run, config, model, label in models:
        started = time.perf_counter()
        (images,) = load_eval_data(
            config, "test", subset=args.num_images, data_dir=args.data_dir, device=device
        )
        per_image = split_gap(
            model, images, num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
            optimizer_options=optimizer_options,
        )  # fmt: skip
        rows.append(
            summarize(run, config.model.guide, per_image, label=label, num_samples=args.num_samples,
                      eval_seconds=time.perf_counter() - started, train_seconds=training_seconds(Path(run)))
        )  # fmt: skip
        r = rows[-1]
        print(
            f"{label}: log p-hat {r['log_likelihood']:.2f}, L[q*] {r['elbo_optimized']:.2f}, "
            f"L[q] {r['elbo_amortized']:.2f}; approximation {r['approximation_gap']:.2f} "
            f"± {r['approximation_gap_se']:.2f}, amortization {r['amortization_gap']:.2f} "
            f"± {r['amortization_gap_se']:.2f} nats ({r['eval_seconds']:.0f} s)"
        )
    results = {"rows": rows, "settings": {k: v for k, v in vars(args).items() if k not in ("runs", "out")}}
    results["seconds"] = time.perf_counter() - invocation_started
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in results["settings"].items()}
    write_results(args.out, NAME, results)
    plot_gaps(rows, args.figure or args.out / f"{NAME}.png")
    return results


if __name__ == "__main__":
    raise SystemExit(run_study(main))
