r"""Learning curves of the Table 1 reproduction: validation and test log p-hat against epochs and
wall-clock, VAE beside IWAE.

The per-epoch history holds the validation ELBO only. The runs of :mod:`analysis.iwae_table` also
keep their weights at chosen epochs (``--snapshots``); this study scores every snapshot with the
IWAE bound at ``--num-samples`` particles,

.. math::  \log \hat p(x) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k | x)},

on the validation images (all 400 of the paper's split) and on the first ``--test-images`` test
images, and plots them, with the validation ELBO of every epoch, against the epoch and against
the training time up to it (the sum of the epoch times in ``metrics.json``). Scores are kept in
``iwae_curves.json`` and reused, so running the study again as training goes on scores only the
new snapshots.

    python -m analysis.iwae_curves --runs ~/pyro-vae-runs --out docs/results \
        --figure docs/figures/iwae_curves.png
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.builders import build_model
from pyro_vae.runs import load_eval_data, read_run_config, read_run_history, score_loaded_run
from pyro_vae.train_state import TrainHistory, list_snapshots, load_snapshot_weights, resolve_device

from .common import run_study, save_figure, study_parser, write_results
from .iwae_table import DEFAULT_RUNS, ROWS

NAME = "iwae_curves"


def score_snapshots(
    run_dir: Path, history: TrainHistory, known: dict[str, dict], *, num_samples: int, test_images: int,
    device, data_dir, progress: bool,
) -> dict[str, dict]:  # fmt: skip
    """``{epoch: {"valid": log p-hat, "test": log p-hat, "wall_seconds": ...}}`` for every snapshot.

    Epochs already in ``known`` (scored with the same K and test images) are not scored again when
    their ``weights`` fingerprint matches the snapshot's: a run trained again into the same folder
    (or a folder from another machine) is scored afresh. ``history`` is the run's (its epoch times
    give the wall-clock of each point).
    """
    config = read_run_config(run_dir)
    elapsed = np.cumsum(history.epoch_seconds)
    model = build_model(config).to(device).eval()
    splits = {
        "valid": load_eval_data(config, "valid", data_dir=data_dir, device=device),
        "test": load_eval_data(config, "test", subset=test_images, data_dir=data_dir, device=device),
    }
    scores = dict(known)
    for epoch, path in list_snapshots(run_dir):
        if epoch > history.epochs:
            continue
        weights = load_snapshot_weights(path)
        fingerprint = weights_fingerprint(weights)
        if scores.get(str(epoch), {}).get("weights") == fingerprint:
            continue
        model.load_state_dict(weights)
        point = {"wall_seconds": float(elapsed[epoch - 1]), "weights": fingerprint}
        for split, data in splits.items():
            report, _ = score_loaded_run(
                config, model, data, num_samples=num_samples, split=split, weights=path.name, device=device,
                compute_khat=False, progress=progress,
            )  # fmt: skip
            point[split] = report["log_likelihood"]
            point[f"{split}_se"] = report["log_likelihood_se"]
        scores[str(epoch)] = point
        print(
            f"{run_dir.name} epoch {epoch}: valid {point['valid']:.2f}, test {point['test']:.2f}", flush=True
        )
    return dict(sorted(scores.items(), key=lambda item: int(item[0])))


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """The first 16 hex digits of the SHA-256 of a state dict's names and values (in order)."""
    digest = hashlib.sha256()
    for name, value in state.items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def plot_curves(curves: dict[str, Any], path: Path) -> None:
    """Two panels: log p-hat against epochs (log axis) and against training hours."""
    fig = Figure(figsize=(11, 4.2))
    by_epoch, by_time = fig.subplots(1, 2, sharey=True)
    highest = -83.0  # the axis top: the best log p-hat drawn, at least -83 (above every paper line)
    for (name, run), colour in zip(curves["runs"].items(), ("tab:blue", "tab:red", "tab:green")):
        epochs = np.array([int(e) for e in run["snapshots"]])
        hours = np.array([p["wall_seconds"] for p in run["snapshots"].values()]) / 3600
        elbo = np.array(run["valid_elbo"])
        elbo_hours = np.cumsum(run["epoch_seconds"]) / 3600
        for axis, x, x_elbo in (
            (by_epoch, epochs, np.arange(1, len(elbo) + 1)),
            (by_time, hours, elbo_hours),
        ):
            axis.plot(x_elbo, elbo, color=colour, alpha=0.25, lw=0.8, label=f"{name}: valid ELBO")
            for split, style in (("valid", "--"), ("test", "-")):
                values = [p[split] for p in run["snapshots"].values()]
                highest = max([highest, *values])
                axis.plot(
                    x, values, style, color=colour, marker="o", ms=3, label=f"{name}: {split} log p-hat"
                )
    for paper, value in curves["paper"].items():
        for axis in (by_epoch, by_time):
            axis.axhline(value, color="grey", lw=0.7, ls=":")
        by_time.annotate(f"paper {paper} {value}", (0.99, value), xycoords=("axes fraction", "data"),
                         ha="right", va="bottom", fontsize=7, color="grey")  # fmt: skip
    by_epoch.set_xscale("log")
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("training time (hours, 2-core CPU)")
    by_epoch.set_ylabel("nats per image")
    by_epoch.set_ylim(-100, np.ceil(highest + 0.5))
    by_epoch.legend(fontsize=7, loc="lower right")
    by_epoch.set_title(f"log p-hat, K = {curves['num_samples']}", fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = study_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="folder holding the run folders")
    parser.add_argument("--num-samples", "-k", type=int, default=1000, help="K particles (default 1000)")
    parser.add_argument("--test-images", type=int, default=1000, help="first N test images (default 1000)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG (default OUT/iwae_curves.png)")
    args = parser.parse_args(argv)
    runs, device = args.runs.expanduser(), resolve_device(args.device)
    path = args.out / f"{NAME}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    same_protocol = (previous.get("num_samples"), previous.get("test_images")) == (
        args.num_samples,
        args.test_images,
    )
    curves = {"num_samples": args.num_samples, "test_images": args.test_images, "runs": {}, "paper": {}}
    for name, row in ROWS.items():
        run_dir = runs / row.run
        earlier = previous.get("runs", {}).get(name) if same_protocol else None
        if not run_dir.is_dir():
            # a curve scored earlier stays (its run folder may live on another machine by now)
            print(f"{name}: no run folder {run_dir}" + ("; keeping its stored curve" if earlier else ""))
            if earlier:
                curves["runs"][name] = earlier
                if row.paper_log_likelihood is not None:
                    curves["paper"][name] = row.paper_log_likelihood
            continue
        known = earlier.get("snapshots", {}) if earlier else {}
        history = read_run_history(run_dir)
        curves["runs"][name] = {
            "snapshots": score_snapshots(
                run_dir,
                history,
                known,
                num_samples=args.num_samples,
                test_images=args.test_images,
                device=device,
                data_dir=args.data_dir,
                progress=not args.no_progress,
            ),  # fmt: skip
            "valid_elbo": history.valid_elbo,
            "epoch_seconds": history.epoch_seconds,
        }
        if row.paper_log_likelihood is not None:
            curves["paper"][name] = row.paper_log_likelihood
    write_results(args.out, NAME, curves)
    plot_curves(curves, args.figure or args.out / f"{NAME}.png")
    return curves


if __name__ == "__main__":
    raise SystemExit(run_study(main))
