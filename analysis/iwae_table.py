r"""Burda, Grosse & Salakhutdinov (2016), Table 1, one stochastic layer, reproduced: evaluate the
trained runs on the MNIST test set, ship their weights, and write ``iwae_table.json``.

Protocol of the paper (section 5.1): dynamically binarized MNIST, 60,000 training images less
the last 400 kept for validation (``--data-split iwae``), the network 784-200-200-50 with tanh
units and a Bernoulli decoder, Adam with eps = 1e-4 and the learning rate 1e-3 * 10^(-i/7) for
3^i epochs, i = 0..7 (3,280 epochs), and the test log-likelihood estimated with the IWAE bound at
K = 5,000 on all 10,000 test images (:func:`pyro_vae.runs.evaluate_run`):

.. math::  \log \hat p(x) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k | x)}, \quad z_k \sim q(z|x).

A latent unit is *active* when Cov_x(E_q[z_u]) > 0.01 (their section 5.2), counted on the same
test images. Each row's weights are exported (best validation epoch, no optimizer state) to
``--pretrained/NAME`` (:func:`pyro_vae.export.export_run`), and the row stores a cheap check
(500 test images at K = 100) that the tests recompute from the shipped folder.

    python -m analysis.iwae_table --runs ~/pyro-vae-runs --out docs/results

Rows whose run folder is missing are skipped; rows already in the JSON and not evaluated again
are kept, so the table can grow as the long runs finish. The training commands are in
:data:`ROWS`; a run that has not reached its last epoch is refused unless ``--allow-unfinished``
(its row then says how many epochs it had).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import ACTIVITY_THRESHOLD, latent_statistics
from pyro_vae.export import export_run
from pyro_vae.runs import (
    describe_weights,
    evaluate_run,
    load_eval_data,
    load_run,
    read_run_config,
    read_run_history,
)

from .common import run_study, study_parser, write_results

NAME = "iwae_table"
DEFAULT_RUNS = Path("~/pyro-vae-runs")
#: The cheap check stored with every row and recomputed by the tests from the shipped weights.
CHECK_IMAGES, CHECK_SAMPLES = 500, 100
PAPER = (
    "Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, Table 1 "
    "(MNIST, one stochastic layer)"
)


@dataclass(frozen=True)
class Row:
    """One model of the table: where its run lives, how it was trained, what the paper reports."""

    name: str
    run: str  # folder name under --runs
    train_flags: str
    description: str
    paper_log_likelihood: float | None
    paper_active_units: int | None
    #: Storage precision of the shipped weights: float16 keeps the tutorial's network at 5.7 MB.
    export_dtype: str = "float32"

    def command(self, runs: Path) -> str:
        return f"pyro-vae train vae {self.train_flags} --out {runs / self.run}"


#: Snapshot epochs of the long runs: 1-2-5 steps, the schedule's stage ends 3^i, every 200.
SNAPSHOTS = (
    "1,2,4,5,10,13,20,40,50,100,121,200,364,400,500,600,800,1000,1093,1200,1400,1600,1800,2000,2200,2400,"
    "2600,2800,3000,3200,3280"
)
ROWS = {
    row.name: row
    for row in (
        Row(
            "vae-k1", "iwae1l-vae-k1-b100-paper-split",
            f"--preset iwae-1layer --batch-size 100 --objective jit-meanfield --snapshots {SNAPSHOTS}",
            "VAE (k = 1): the tutorial's Eq. 10 with the paper's network and schedule, batch 100",
            -86.76, 19,
        ),
        Row(
            "iwae-k5", "iwae1l-iwae-k5-b100-paper-split",
            "--preset iwae-1layer --batch-size 100 --objective jit-iwae --num-particles 5 "
            f"--snapshots {SNAPSHOTS}",
            "IWAE (k = 5): the importance-weighted bound with 5 particles, same network and schedule",
            -85.54, 22,
        ),
        # KL warm-up took this network from -96.37 (the same flags without it, with jit-meanfield,
        # which cannot warm up) to the row's number; without it only 7 of its 30 units stayed active.
        Row(
            "tutorial-net", "tutorial-net-warmup50-cosine150-paper-split",
            "--data-split iwae --objective meanfield --kl-warmup 50 --lr-schedule cosine --epochs 150 "
            "--init-output-bias --snapshots log",
            "the tutorial's network (784-1000-500-250 ReLU, z = 30), Eq. 10 with the KL weight warmed up "
            "from 0 to 1 over 50 epochs, cosine schedule over 150 epochs",
            None, None, export_dtype="float16",
        ),
    )
}  # fmt: skip


def evaluate_row(
    row: Row, runs: Path, pretrained: Path, *, num_samples: int, subset: int | None, allow_unfinished: bool,
    device: str, data_dir: Path | None, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """Export the best weights of ``row``'s run to ``pretrained/NAME`` and score them on the test split."""
    run_dir = runs / row.run
    config = read_run_config(run_dir)
    history = read_run_history(run_dir)
    if history.epochs < config.train.epochs and history.stop is None and not allow_unfinished:
        raise ConfigError(
            f"{run_dir} has trained {history.epochs} of {config.train.epochs} epochs; resume it "
            "(pyro-vae train vae --resume --out ...) or pass --allow-unfinished for an interim row"
        )
    shipped = pretrained / row.name
    if shipped.exists():
        shutil.rmtree(shipped)  # a re-evaluation ships the weights it scored
    export_run(run_dir, shipped, dtype=row.export_dtype)
    # The cheap measurements first, so that a fault in them cannot waste the long evaluation.
    check, _ = evaluate_run(
        shipped, num_samples=CHECK_SAMPLES, subset=CHECK_IMAGES, device=device, data_dir=data_dir,
        progress=False,
    )  # fmt: skip
    config, model = load_run(shipped, device=device)
    test_binary = load_eval_data(config, "test", subset=subset, data_dir=data_dir, device=device)[0]
    active = latent_statistics(model, test_binary).num_active(ACTIVITY_THRESHOLD)
    report, _ = evaluate_run(
        shipped, num_samples=num_samples, subset=subset, device=device, data_dir=data_dir, progress=progress
    )
    return {
        "name": row.name,
        "description": row.description,
        "objective": config.train.objective,
        "num_particles": config.train.num_particles,
        "log_likelihood": report["log_likelihood"],
        "log_likelihood_se": report["log_likelihood_se"],
        "log_likelihood_se_images": report["log_likelihood_se_images"],
        "elbo": report["elbo"],
        # Eq. 5's terms on the same images: the gap log p-hat - ELBO, rate and distortion (section 2.4.2)
        **{key: report[key] for key in ("gap", "rate", "distortion", "ess_fraction", "khat_over_0_7")},
        "active_units": active,
        "num_images": report["num_images"],
        "num_samples": num_samples,
        "epochs": history.epochs,
        "epochs_planned": config.train.epochs,
        "weights": describe_weights(shipped),
        "batch_size": config.train.batch_size,
        "data_split": config.train.data_split,
        "wall_seconds": sum(history.epoch_seconds),
        "eval_seconds": report["seconds"],
        "device": f"training: cpu (2-core shared VM, runs side by side); evaluation: {report['device']}",
        "command": row.command(runs),
        "pretrained": str(shipped),
        "pretrained_dtype": row.export_dtype,
        "check": {
            "num_images": CHECK_IMAGES,
            "num_samples": CHECK_SAMPLES,
            "log_likelihood": check["log_likelihood"],
        },
        "paper": {"log_likelihood": row.paper_log_likelihood, "active_units": row.paper_active_units},
    }  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README's table: each row beside the paper's number."""
    lines = [
        "| model | test log p-hat (K = 5,000) | ELBO | active units | epochs | training time | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = r["paper"]["log_likelihood"]
        lines.append(
            f"| {r['name']} | {r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f} | {r['elbo']:.2f} | "
            f"{r['active_units']} | {r['epochs']} of {r['epochs_planned']} | "
            f"{r['wall_seconds'] / 3600:.1f} h | "
            f"{paper if paper is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = study_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="folder holding the run folders")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to evaluate")
    parser.add_argument("--pretrained", type=Path, default=Path("pretrained"), help="where the weights go")
    parser.add_argument("--num-samples", "-k", type=int, default=5000, help="K particles (default 5000)")
    parser.add_argument("--subset", type=int, help="only the first N test images (default all 10,000)")
    parser.add_argument("--allow-unfinished", action="store_true", help="score a run that is still training")
    args = parser.parse_args(argv)
    runs = args.runs.expanduser()
    path = args.out / f"{NAME}.json"
    kept = {}
    if path.is_file():
        kept = {row["name"]: row for row in json.loads(path.read_text()).get("rows", [])}
    for name in args.rows:
        if not (runs / ROWS[name].run).is_dir():
            print(f"{name}: no run folder {runs / ROWS[name].run}; train it with: {ROWS[name].command(runs)}")
            continue
        kept[name] = evaluate_row(
            ROWS[name], runs, args.pretrained, num_samples=args.num_samples, subset=args.subset,
            allow_unfinished=args.allow_unfinished, device=args.device, data_dir=args.data_dir,
            progress=not args.no_progress,
        )  # fmt: skip
        row = kept[name]
        print(f"{name}: log p-hat {row['log_likelihood']:.2f} nats ({row['eval_seconds']:.0f} s to evaluate)")
    rows = [kept[name] for name in ROWS if name in kept]
    results = {"paper": PAPER, "rows": rows}
    write_results(args.out, NAME, results)
    print(markdown_table(rows))
    return results


if __name__ == "__main__":
    raise SystemExit(run_study(main))
