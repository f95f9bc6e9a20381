"""The plain-PyTorch peer of the ``tutorial-net`` row of the IWAE table: the same recipe, no Pyro.

pyro-vae's tutorial-network row (``analysis.iwae_table``, shipped in ``pretrained/tutorial-net``)
was trained with Eq. 10, the KL weight warmed up from 0 to 1 over 50 epochs, a cosine learning
rate over 150 epochs and the decoder's output bias set to the logit of the mean training image.
This script writes that recipe as the straightforward eager loop a user would (BCE + beta x the
closed-form KL, :func:`benchmarks.plain_vae.meanfield_terms`) on the same networks
(``build_vae(VAEConfig())``: 784-1000-500-250 ReLU, z = 30), the same data (the paper's split,
59,600 training images with dynamic binarization, 400 for validation), Adam 1e-3, batch 100, and
keeps the weights of its best validation epoch (one-sample ELBO on the 400 validation images,
binarized once with seed 1234, as ``pyro-vae train`` does). Then both models are scored side by
side with the same estimator on the same test images (K-sample importance sampling with the
encoder as proposal, one fixed binarization, seed 1234): log p-hat, ELBO, active units, and the
paired difference per image.

    python -m benchmarks.tutorial_net_peer --out docs/results

150 epochs took 1.1 h here (one thread of the 2-core machine, beside another training) and
scoring both models 6 min.

Writes ``OUT/tutorial_net_peer.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import pyro
import torch

from analysis.common import check_positive, run_study
from pyro_vae import VAEConfig, build_vae
from pyro_vae.checkpoint import atomic_write_json
from pyro_vae.data import load_mnist, minibatch_indices
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import ImportanceSamplingSummary
from pyro_vae.evaluation import (
    ACTIVITY_THRESHOLD,
    evaluate_elbo,
    evaluate_importance_sampling,
    latent_statistics,
    mean_se,
    split_report,
)
from pyro_vae.runs import load_eval_data, load_run, read_run_history
from pyro_vae.schedules import CosineFactor, kl_weight

from .plain_vae import meanfield_terms
from .results_file import machine_description

TUTORIAL_NET = VAEConfig()  # 784-1000-500-250, ReLU, z = 30
PROG = "benchmarks.tutorial_net_peer"


def train_peer(
    images: torch.Tensor, valid: torch.Tensor, *, epochs: int, warmup_epochs: float, lr: float,
    batch_size: int, seed: int, log=print,
) -> tuple[torch.nn.Module, dict]:  # fmt: skip
    """Train the tutorial network with the warm-up recipe in a plain loop; the best validation epoch's model.

    beta = min(1, step / (warmup_epochs * steps_per_epoch)) multiplies the KL at each (0-based)
    step; the learning rate is lr * (1 + cos(pi e / epochs)) / 2 in epoch e (0-based).
    """
    torch.manual_seed(seed)
    vae = build_vae(TUTORIAL_NET, name="plain")
    encoder, decoder = vae.encoder.body, vae.decoder.body
    with torch.no_grad():  # P(X|z)'s mean starts at the mean training image (Bernoulli logit)
        decoder[-1].bias.copy_(torch.logit(images.mean(0).clamp(1e-3, 1 - 1e-3)))
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineFactor(epochs))
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-images.shape[0] // batch_size)
    curve = {"train_objective": [], "valid_elbo": [], "epoch_seconds": []}
    best_state, best_elbo, step = None, -float("inf"), 0
    for epoch in range(epochs):
        started, total = time.perf_counter(), 0.0
        for idx in minibatch_indices(images.shape[0], batch_size, generator=generator):
            beta = kl_weight(step, steps_per_epoch, warmup_epochs)
            x = torch.bernoulli(images[idx])
            reconstruction, kl = meanfield_terms(encoder, decoder, x, TUTORIAL_NET.z_dim)
            loss = reconstruction + beta * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total -= loss.item()
            step += 1
        scheduler.step()
        seconds = time.perf_counter() - started
        valid_elbo = evaluate_elbo(vae, (valid,))
        curve["train_objective"].append(total / images.shape[0])
        curve["valid_elbo"].append(valid_elbo)
        curve["epoch_seconds"].append(seconds)
        if valid_elbo > best_elbo:
            best_elbo, best_state = valid_elbo, copy.deepcopy(vae.state_dict())
        log(f"peer epoch {epoch + 1}/{epochs}  beta {beta:.2f}  train objective "
            f"{total / images.shape[0]:.2f}  valid ELBO {valid_elbo:.2f}  ({seconds:.1f} s)")  # fmt: skip
    vae.load_state_dict(best_state)
    curve["best_epoch"] = max(range(epochs), key=lambda e: curve["valid_elbo"][e]) + 1
    curve["wall_seconds"] = sum(curve["epoch_seconds"])
    return vae.eval(), curve


def score(
    model, test: torch.Tensor, num_samples: int, progress: bool
) -> tuple[dict, ImportanceSamplingSummary]:
    """Importance-sampled log p-hat, ELBO and Burda's active units of ``model`` on ``test``."""
    started = time.perf_counter()
    summary = evaluate_importance_sampling(model, (test,), num_samples=num_samples, progress=progress)
    report = split_report(summary, num_samples=num_samples)
    report["active_units"] = latent_statistics(model, test).num_active(ACTIVITY_THRESHOLD)
    report["seconds"] = time.perf_counter() - started
    return report, summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tutorial_net_peer.json")
    parser.add_argument("--pretrained", type=Path, default=Path("pretrained/tutorial-net"),
                        help="the pyro-vae run folder to score beside the peer")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--kl-warmup", type=float, default=50.0, metavar="EPOCHS")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=None, help="first N training images (smoke runs)")
    parser.add_argument("--test-images", type=int, default=1000, help="the first N test images are scored")
    parser.add_argument("-k", "--num-samples", type=int, default=5000)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for name in ("epochs", "lr", "batch_size", "num_samples", "test_images"):
        check_positive(f"--{name.replace('_', '-')}", [getattr(args, name)])
    if args.kl_warmup < 0:
        raise ConfigError(f"--kl-warmup must be >= 0 epochs, got {args.kl_warmup}")
    # The pyro-vae model first: a wrong --pretrained must fail before the long training, not after.
    config, pyro_vae_model = load_run(args.pretrained, kinds=("vae",))
    sizes = (tuple(config.model.hidden_sizes), config.model.z_dim)
    if sizes != (TUTORIAL_NET.hidden_sizes, TUTORIAL_NET.z_dim):
        raise ConfigError(f"{args.pretrained} is not the tutorial network (784-1000-500-250, z = 30)")
    pyro_vae_history = read_run_history(args.pretrained)

    # the shipped run's split and binarization seed, so that both models see the same digits
    images = load_mnist(
        "train", args.data_dir, subset=args.train_images, data_split=config.train.data_split
    ).images
    valid = load_eval_data(config, "valid", data_dir=args.data_dir)[0]
    test = load_eval_data(config, "test", subset=args.test_images, data_dir=args.data_dir)[0]
    peer, curve = train_peer(
        images, valid, epochs=args.epochs, warmup_epochs=args.kl_warmup, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    peer_report, peer_summary = score(peer, test, args.num_samples, not args.no_progress)
    pyro_vae_report, pyro_vae_summary = score(pyro_vae_model, test, args.num_samples, not args.no_progress)
    paired = mean_se((peer_summary.log_likelihood - pyro_vae_summary.log_likelihood).double())
    results = {
        "setup": {
            "network": "784-1000-500-250 ReLU, z = 30 (build_vae(VAEConfig()))",
            "recipe": f"Eq. 10 (BCE + beta * closed-form KL), beta warmed up over {args.kl_warmup:g} epochs, "
            f"Adam lr {args.lr:g} with a cosine schedule over {args.epochs} epochs, batch {args.batch_size}, "
            "decoder output bias = logit(mean training image), best validation epoch",
            "train_images": int(images.shape[0]),
            "data_split": config.train.data_split,
            "seed": args.seed,
            "test_images": int(test.shape[0]),
            "num_samples": args.num_samples,
            "machine": machine_description(),
        },
        "peer": {**curve, "test": peer_report},
        "pyro_vae": {
            "run": str(args.pretrained),
            "objective": config.train.objective,
            "epochs": pyro_vae_history.epochs,
            "best_epoch": pyro_vae_history.best_epoch,
            "valid_elbo": pyro_vae_history.valid_elbo,
            "wall_seconds": sum(pyro_vae_history.epoch_seconds),
            "test": pyro_vae_report,
        },
        # per image, peer minus pyro-vae, on the same binarized images: the paired comparison
        "log_likelihood_difference": paired,
        "command": f"python -m {PROG} " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "tutorial_net_peer.json", results)
    for name, report in (("peer", peer_report), ("pyro-vae", pyro_vae_report)):
        print(
            f"{name}: test log p-hat {report['log_likelihood']:.2f} (K = {args.num_samples}, first "
            f"{test.shape[0]} test images), ELBO {report['elbo']:.2f}, {report['active_units']} active"
        )
    print(f"peer - pyro-vae, paired over images: {paired['mean']:+.2f} +- {paired['se']:.2f} nats")
    return results


if __name__ == "__main__":
    raise SystemExit(run_study(main))
