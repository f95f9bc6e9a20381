"""One rank of the distributed tests; launched by ``python -m torch.distributed.run`` (torchrun).

Trains a small model with :func:`pyro_vae.train.train` on its shard and saves its final weights
to ``OUT/rank<r>.pt`` so the test can compare ranks with each other and with a single process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyro_vae.builders import CVAEConfig, VAEConfig, build_regressor, build_vae
from pyro_vae.data import binarize, fixed_binarization, load_mnist, split_column
from pyro_vae.distributed import init_from_environment, shutdown
from pyro_vae.train import train


def build_case(kind: str, num_images: int):
    """The model (same initial weights on every rank), training tensors, validation and transform."""
    torch.manual_seed(0)
    images = load_mnist("train", subset=num_images).images
    if kind == "regressor":  # no latent variable and fixed binary data: a deterministic loss
        model = build_regressor(CVAEConfig(hidden_sizes=(32,), condition_sizes=(16,), condition_dim=8))
        data = split_column(fixed_binarization(images, 0))
        return model, data, tuple(t[:100] for t in data), None
    model = build_vae(VAEConfig(z_dim=3, hidden_sizes=(32,)))
    return model, (images,), (fixed_binarization(images[:100], 0),), lambda x: (binarize(x),)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["vae", "regressor"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    context, device = init_from_environment("cpu")
    model, data, valid, transform = build_case(args.kind, args.images)
    train(
        model,
        data,
        valid,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-2,
        seed=0,
        batch_transform=transform,
        device=device,
        distributed=context,
        progress=False,
        log=None,
    )
    torch.save(model.state_dict(), args.out / f"rank{context.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main()
