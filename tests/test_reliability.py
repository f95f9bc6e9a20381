"""Run folders under concurrency, divergence and write faults: lock, guard, injected faults, kill -9."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch

from pyro_vae import VAEConfig, build_vae, train
from pyro_vae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from pyro_vae.cli import main
from pyro_vae.data import binarize
from pyro_vae.divergence import DivergenceGuard
from pyro_vae.errors import RunFolderError, TrainingDivergedError
from pyro_vae.run_folder import LOCK_NAME, run_folder_lock

TINY = VAEConfig(z_dim=3, hidden_sizes=(32,))
FLAGS = ["--hidden", "32", "--z-dim", "3", "--device", "cpu", "--no-progress"]


def run_cli(*argv):
    try:
        return main(list(argv))
    except SystemExit as exit_:
        return exit_.code


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def spawn_training(out, *flags):
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae.cli", "train", "vae", *FLAGS, "--out", str(out), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def checkpoint_epoch(out) -> int:
    try:
        return load_checkpoint(out)["epoch"]
    except Exception:  # not written yet
        return -1


# --- one writer per run folder ------------------------------------------------------------------


def test_a_second_writer_is_refused_and_readers_see_whole_checkpoints(tmp_path, capsys):
    """Two trainings into one folder: the second gets one line naming the first's pid, exit 2,
    and does not touch the folder; meanwhile every read of the checkpoint is a whole one."""
    out = tmp_path / "run"
    first = spawn_training(out, "--subset", "2000", "--epochs", "6")
    try:
        wait_for(lambda: (out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text().strip())
        assert run_cli("train", "vae", *FLAGS, "--subset", "500", "--epochs", "1", "--out", str(out)) == 2
        one_line_error(capsys, f"{out} is in use by process {first.pid}")
        epochs = []
        while first.poll() is None:  # readers while the writer replaces the checkpoint
            epochs.append(checkpoint_epoch(out))
        assert first.returncode == 0, first.communicate()[1]
        readable = [e for e in epochs if e >= 0]
        assert readable == sorted(readable) and len(set(readable)) >= 2
    finally:
        first.kill()
        first.communicate()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["valid_elbo"]) == 6  # the refused writer changed nothing


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("999999\n")  # no such process holds it
    with run_folder_lock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
            with run_folder_lock(out):
                pass
    with run_folder_lock(out):  # released on exit
        pass


# --- divergence ----------------------------------------------------------------------------------


def explode_from_call(first_bad_call: int):
    calls = {"n": 0}

    def transform(x):
        calls["n"] += 1
        return (x * 1e30,) if calls["n"] >= first_bad_call else (x,)

    return transform


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_weights(tmp_path, small_train_images):
    """Epoch 2 explodes at its first step: the weights stay exactly those after epoch 1 (the
    guard skips that update and every later one), and metrics.json says why and when."""
    config = VAEConfig(z_dim=3, hidden_sizes=(32,), likelihood="gaussian", sigma=0.1)
    images = small_train_images[:300]
    options = dict(batch_size=100, seed=2, progress=False, log=None)
    torch.manual_seed(0)
    one_epoch = build_vae(config)
    train(one_epoch, (images,), (images[:100],), epochs=1, **options)
    torch.manual_seed(0)
    exploded = build_vae(config)
    with pytest.raises(TrainingDivergedError, match="the loss became NaN or infinite at step 1 in epoch 2"):
        train(exploded, (images,), (images[:100],), epochs=3, run_dir=tmp_path,
              batch_transform=explode_from_call(4), **options)  # fmt: skip
    for (name, a), (_, b) in zip(one_epoch.state_dict().items(), exploded.state_dict().items()):
        assert torch.equal(a, b), name
    assert load_checkpoint(tmp_path)["epoch"] == 1
    stop = json.loads((tmp_path / "metrics.json").read_text())["stop"]
    assert stop["reason"] == "diverged" and stop["epoch"] == 2 and "step 1" in stop["detail"]


def test_a_non_finite_gradient_is_caught_although_the_loss_is_finite(small_train_images, small_valid_binary):
    vae = build_vae(TINY)
    poison = {"on": False}
    vae.decoder.body[0].weight.register_hook(lambda g: g * float("nan") if poison["on"] else g)

    def transform(x):
        poison["on"] = transform.calls >= 2
        transform.calls += 1
        return (binarize(x),)

    transform.calls = 0
    with pytest.raises(TrainingDivergedError, match="the gradient became NaN or infinite at step 3"):
        train(vae, (small_train_images[:300],), (small_valid_binary[:50],), epochs=1,
              batch_transform=transform, progress=False, log=None)  # fmt: skip
    assert all(bool(torch.isfinite(p).all()) for p in vae.parameters())


def test_a_run_diverging_in_its_first_epoch_keeps_its_initial_weights(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", "vae", "--subset", "2000", "--epochs", "2", "--lr", "1e4", "--out", str(out),
                   "--device", "cpu", "--no-progress")  # fmt: skip
    assert code == 2
    one_line_error(capsys, "NaN or infinite", "epoch 1", "(epoch 0)", "--clip-grad-norm")
    state = load_checkpoint(out)
    assert state["epoch"] == 0 and all(bool(torch.isfinite(v).all()) for v in state["model_state"].values())
    assert json.loads((out / "metrics.json").read_text())["stop"]["reason"] == "diverged"


def test_gradient_clipping_bounds_the_norm():
    """Known answer: after clipping to 0.5 the total gradient norm is 0.5 (it was larger)."""
    vae = build_vae(TINY)
    optimizer = torch.optim.Adam(vae.parameters(), fused=True)
    guard = DivergenceGuard(optimizer, clip_grad_norm=0.5)
    x = binarize(torch.rand(16, 784), torch.Generator().manual_seed(0))
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    before = torch.nn.utils.get_total_norm([p.grad for p in vae.parameters()])
    guard.after_backward(loss, step=0)
    after = torch.nn.utils.get_total_norm([p.grad for p in vae.parameters()])
    assert float(before) > 1 and float(after) == pytest.approx(0.5, rel=1e-4)
    assert not guard.tripped()
    guard.release()


# --- write faults --------------------------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli("train", "vae", *FLAGS, "--subset", "300", "--epochs", "1", "--out", str(out)) == 0
    before = (out / CHECKPOINT_NAME).read_bytes()
    capsys.readouterr()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pyro_vae.checkpoint.os.replace", no_space)
    assert run_cli("train", "vae", "--epochs", "2", "--resume", "--out", str(out), "--no-progress") == 2
    one_line_error(capsys, "No space left on device", "the previous version is intact")
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert load_checkpoint(out)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_unwritable_places_give_one_line(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "run"):
        assert run_cli("train", "vae", *FLAGS, "--subset", "300", "--epochs", "1", "--out", str(out)) == 2
        one_line_error(capsys, f"{a_file} is a file, not a folder")
    monkeypatch.setattr("pyro_vae.run_folder.os.access", lambda path, mode: False)  # a read-only folder
    assert (
        run_cli("train", "vae", *FLAGS, "--subset", "300", "--epochs", "1", "--out", str(tmp_path / "ro"))
        == 2
    )
    one_line_error(capsys, "cannot write to the run folder", "permission denied")
    monkeypatch.undo()
    run = tmp_path / "ok"
    assert run_cli("train", "vae", *FLAGS, "--subset", "300", "--epochs", "1", "--out", str(run)) == 0
    capsys.readouterr()
    assert run_cli("sample", str(run), "--out", str(a_file / "s.png"), "--device", "cpu") == 2
    one_line_error(capsys, "Not a directory")


def test_a_batch_larger_than_the_data_is_announced(small_train_images, small_valid_binary):
    lines = []
    history = train(build_vae(TINY), (small_train_images[:50],), (small_valid_binary[:20],), epochs=1,
                    batch_size=100, batch_transform=lambda x: (binarize(x),), progress=False,
                    log=lines.append)  # fmt: skip
    assert history.epochs == 1
    assert any("batch size 100 exceeds the 50 training datapoints" in line for line in lines)


# --- kill -9 and resume --------------------------------------------------------------------------


def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path):
    flags = ["--subset", "2000", "--epochs", "5", "--seed", "4"]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    process = spawn_training(killed, *flags)
    wait_for(lambda: checkpoint_epoch(killed) >= 1 or process.poll() is not None)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert 1 <= checkpoint_epoch(killed) < 5, "the run finished before it could be killed"
    resumed = subprocess.run(
        [sys.executable, "-m", "pyro_vae.cli", "train", "vae", "--resume", "--epochs", "5",
         "--out", str(killed), "--device", "cpu", "--no-progress"], capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert run_cli("train", "vae", *FLAGS, *flags, "--out", str(straight)) == 0
    a, b = load_checkpoint(killed), load_checkpoint(straight)
    assert a["epoch"] == b["epoch"] == 5
    for name in a["model_state"]:
        assert torch.equal(a["model_state"][name], b["model_state"][name]), name


def test_the_guard_checks_on_the_host_for_optimizers_without_the_fused_kernel():
    """Plain (foreach) Adam cannot skip an update on the device: the guard says so (on_device is
    False, and the loop then checks after every step), and still names the bad step."""
    vae = build_vae(TINY)
    guard = DivergenceGuard(torch.optim.Adam(vae.parameters(), foreach=True))
    assert not guard.on_device
    x = binarize(torch.rand(8, 784), torch.Generator().manual_seed(0))
    for step, poison in enumerate([False, False, True]):
        vae.zero_grad()
        loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        loss.backward()
        if poison:
            vae.encoder.body[0].bias.grad[0] = float("inf")
        guard.after_backward(loss, step)
        assert guard.tripped() is poison
    assert guard.describe() == "the gradient became NaN or infinite at step 3"
    assert not hasattr(guard.optimizer, "found_inf")
