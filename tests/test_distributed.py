"""Data-parallel training with torch.distributed: 2 CPU processes on the gloo backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from pyro_vae.train import train

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from distributed_worker import build_case  # noqa: E402


def torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Launch 2 ranks on this machine with torchrun (single-threaded each: CI has 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a local rendezvous on a free port
        "--nproc_per_node",
        "2",
        *args,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun's workers too, not only torchrun
        stdout, stderr = process.communicate()
        raise AssertionError(f"torchrun timed out:\n{stdout[-2000:]}{stderr[-2000:]}") from None
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_ranks_end_with_identical_parameters(tmp_path):
    torchrun(str(WORKER), "--kind", "vae", "--out", str(tmp_path), "--batch-size", "50", "--epochs", "2")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    torch.manual_seed(0)
    untrained, *_ = build_case("vae", 10)
    assert not torch.equal(untrained.state_dict()["encoder.body.0.weight"], rank0["encoder.body.0.weight"])


def test_two_ranks_of_batch_b_match_one_process_with_batch_2b(tmp_path):
    """Same data order, deterministic loss: the DDP step equals the single-process step with 2B."""
    torchrun(str(WORKER), "--kind", "regressor", "--out", str(tmp_path), "--batch-size", "50")
    model, data, valid, transform = build_case("regressor", 1000)
    train(
        model,
        data,
        valid,
        epochs=1,
        batch_size=100,
        lr=1e-2,
        seed=0,
        batch_transform=transform,  # 1,000 images: ten full batches, as the ranks take
        progress=False,
        log=None,
    )
    distributed = torch.load(tmp_path / "rank0.pt", weights_only=True)
    single = model.state_dict()
    for name in single:
        assert torch.allclose(single[name], distributed[name], atol=1e-5, rtol=1e-4), name
    torch.manual_seed(0)
    untrained, *_ = build_case("regressor", 10)
    moved = (untrained.state_dict()["decoder.body.0.weight"] - single["decoder.body.0.weight"]).abs().max()
    assert moved > 1e-3  # ten Adam steps at lr 1e-2 really changed the weights


def test_cli_trains_and_resumes_with_torchrun(tmp_path):
    out = tmp_path / "run"
    flags = [
        "--distributed",
        "--subset",
        "600",
        "--hidden",
        "32",
        "--z-dim",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    first = torchrun("-m", "pyro_vae.cli", "train", "vae", "--epochs", "1", *flags)
    assert first.stdout.count("epoch 1/1") == 1  # only rank 0 reports
    torchrun("-m", "pyro_vae.cli", "train", "vae", "--epochs", "2", "--resume", *flags)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["valid_elbo"]) == 2
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(state["rank_rng"]) == 2 and state["epoch"] == 2
