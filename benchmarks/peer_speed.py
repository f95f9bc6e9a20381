"""This project against Pyro's own VAE example (``examples/vae/vae.py``), side by side.

The peer is reimplemented faithfully inside this script: an MLP 784-400-50 with softplus
activations, ``z_scale = exp(...)``, a decoder ``sigmoid(...)`` with the example's fudge, a
``Bernoulli(probs)`` likelihood on the cached grayscale images, a ``torch.utils.data.DataLoader``
(batch 256, shuffled, default collate, no workers) over the preloaded tensors as in the example's
``MNISTCached``, and ``SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())``. Pyro 1.9
validates distributions by default and refuses grayscale values under a Bernoulli, so the peer
runs with validation off, as the example did when it was written.

This project trains the same sizes (784-400-50; ReLU, softplus scale) with :func:`pyro_vae.train.train`:
dynamically binarized batches sliced from a preloaded tensor, validation on, one torch Adam. The
table gives images per second over the 50,000 training images (the best of interleaved epochs:
interference from other processes only ever adds time).

    python -m benchmarks.peer_speed
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae import VAEConfig, build_vae, train
from pyro_vae.data import binarize, fixed_binarization, load_mnist

from .results_file import publish

FUDGE = 1e-7


class PeerEncoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x.reshape(-1, 784)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class PeerDecoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 784)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return (self.sigmoid(self.fc21(hidden)) + FUDGE) * (1 - 2 * FUDGE)


class PeerVAE(nn.Module):
    def __init__(self, z_dim: int = 50, hidden_dim: int = 400):
        super().__init__()
        self.encoder = PeerEncoder(z_dim, hidden_dim)
        self.decoder = PeerDecoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def peer_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = PeerVAE()
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True, num_workers=0)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1.0e-3}), loss=Trace_ELBO())
    started = time.perf_counter()
    with pyro.validation_enabled(False):
        epoch_loss = 0.0
        for x, _ in loader:
            epoch_loss += svi.step(x)
    return time.perf_counter() - started


def project_epoch(images: torch.Tensor, valid: torch.Tensor, batch_size: int) -> float:
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(z_dim=50, hidden_sizes=(400,)))
    started = time.perf_counter()
    train(vae, (images,), (valid,), epochs=1, batch_size=batch_size, lr=1e-3,
          batch_transform=lambda x: (binarize(x),), progress=False, log=None)  # fmt: skip
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    train_split = load_mnist("train", subset=args.num_images)
    valid = fixed_binarization(load_mnist("valid", subset=100).images, 0)
    peer_epoch(train_split.images[:2000], train_split.labels[:2000], args.batch_size)  # warm-up
    project_epoch(train_split.images[:2000], valid, args.batch_size)
    peer_times, project_times = [], []
    for _ in range(args.repeats):
        peer_times.append(peer_epoch(train_split.images, train_split.labels, args.batch_size))
        project_times.append(project_epoch(train_split.images, valid, args.batch_size))
    num = len(train_split)
    peer_t, project_t = min(peer_times), min(project_times)
    publish(
        "peer_speed",
        "Against Pyro's VAE example (`python -m benchmarks.peer_speed`)",
        f"784-400-50, batch {args.batch_size}, {num:,} images per epoch, Trace_ELBO, "
        f"best of {args.repeats} interleaved epochs. Peer: `examples/vae/vae.py` as written "
        "(DataLoader over cached tensors, pyro.optim.Adam, validation off); this project: "
        "`pyro_vae.train` (sliced device-resident batches, dynamic binarization, validation on, "
        "one torch Adam).",
        ["setup", ">epoch (s)", ">images/s"],
        [
            f"| Pyro examples/vae (peer) | {peer_t:.2f} | {num / peer_t:,.0f} |",
            f"| pyro-vae | {project_t:.2f} | {num / project_t:,.0f} |",
            f"| **speed-up** | | **{peer_t / project_t:.2f}x** |",
        ],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
