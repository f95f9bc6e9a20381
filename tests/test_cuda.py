"""GPU paths (skipped without CUDA): training, evaluation and checkpoints move between devices."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import RunConfig, TrainConfig, VAEConfig
from pyro_vae.runs import evaluate_run, load_run, train_run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_train_on_cuda_and_evaluate_on_both_devices(tmp_path):
    config = RunConfig(model=VAEConfig(z_dim=4, hidden_sizes=(64,)), train=TrainConfig(epochs=2, subset=2000))
    model, history = train_run(config, tmp_path / "run", device="cuda", progress=False, log=None)
    assert next(model.parameters()).is_cuda
    assert all(math.isfinite(v) for v in history.valid_elbo)
    _, on_cpu = load_run(tmp_path / "run", device="cpu")  # a checkpoint written from the GPU loads on the CPU
    assert not next(on_cpu.parameters()).is_cuda
    reports = {
        device: evaluate_run(tmp_path / "run", num_samples=200, subset=200, device=device, progress=False)[0]
        for device in ("cpu", "cuda")
    }
    # same images, different random draws: agreement within the Monte Carlo error
    difference = abs(reports["cpu"]["log_likelihood"] - reports["cuda"]["log_likelihood"])
    tolerance = (
        5 * math.hypot(reports["cpu"]["log_likelihood_se"], reports["cuda"]["log_likelihood_se"]) + 0.05
    )
    assert difference < tolerance


def test_resume_on_cuda(tmp_path):
    config = RunConfig(model=VAEConfig(z_dim=3, hidden_sizes=(32,)), train=TrainConfig(epochs=1, subset=500))
    train_run(config, tmp_path / "run", device="cuda", progress=False, log=None)
    longer = RunConfig(model=config.model, train=TrainConfig(epochs=2, subset=500))
    _, history = train_run(longer, tmp_path / "run", device="cuda", resume=True, progress=False, log=None)
    assert history.epochs == 2
