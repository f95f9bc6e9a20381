"""Shared fixtures: a clean, seeded, validated Pyro state for every test; small MNIST tensors."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_vae.data import fixed_binarization, load_mnist


@pytest.fixture(autouse=True)
def clean_pyro_state():
    """Every test starts with an empty parameter store, seed 0, Pyro's validation on and float32
    as torch's default dtype (restored afterwards, whatever the test set)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def small_train_images() -> torch.Tensor:
    """The first 3,000 training images as intensities, ``(3000, 784)``."""
    return load_mnist("train", subset=3000).images


@pytest.fixture(scope="session")
def small_valid_binary() -> torch.Tensor:
    """The first 1,000 validation images, binarized once with seed 1, ``(1000, 784)``."""
    return fixed_binarization(load_mnist("valid", subset=1000).images, seed=1)


@pytest.fixture(scope="session")
def tiny_vae_run(tmp_path_factory):
    """A VAE run folder (z_dim 4, one hidden layer of 64, 1,000 images, 2 epochs) for the studies."""
    from pyro_vae import RunConfig, TrainConfig, VAEConfig
    from pyro_vae.runs import train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = RunConfig(
        model=VAEConfig(z_dim=4, hidden_sizes=(64,)), train=TrainConfig(epochs=2, subset=1000, lr=3e-3)
    )
    train_run(config, out, device="cpu", progress=False, log=None)
    pyro.clear_param_store()
    return out


@pytest.fixture(scope="session")
def tiny_completion_runs(tmp_path_factory):
    """A CVAE and a regressor run (small networks, 1,500 images, 2 epochs) on the column task."""
    from pyro_vae import RunConfig, TrainConfig
    from pyro_vae.builders import CVAEConfig
    from pyro_vae.runs import train_run

    root = tmp_path_factory.mktemp("completion_runs")
    model = CVAEConfig(z_dim=4, hidden_sizes=(64,), condition_sizes=(32,), condition_dim=16)
    train = TrainConfig(epochs=2, subset=1500, lr=2e-3)
    for kind in ("cvae", "regressor"):
        train_run(
            RunConfig(kind=kind, model=model, train=train),
            root / kind,
            device="cpu",
            progress=False,
            log=None,
        )
        pyro.clear_param_store()
    return root / "cvae", root / "regressor"
