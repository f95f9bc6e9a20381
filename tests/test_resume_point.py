"""analysis.resume_point copies a training run's state into runs-in-progress/ and records the next
epoch's validation ELBO, so that the committed copy resumes where the run was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from analysis import resume_point
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main as cli_main
from pyro_vae.errors import ConfigError
from pyro_vae.runs import read_run_history


def test_copies_the_checkpoint_and_records_the_next_epoch(tiny_vae_run, tmp_path):
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_vae_run, run, ignore=shutil.ignore_patterns(".lock"))
    dest = tmp_path / "runs-in-progress"
    assert resume_point.copy_resume_point(run, dest) == 2
    copied = load_checkpoint(dest / "tiny" / "checkpoint.pt")
    assert copied["epoch"] == 2 and not list((dest / "tiny").glob(".*.partial"))
    metrics = json.loads((dest / "tiny" / "metrics.json").read_text())
    assert metrics["valid_elbo"] == copied["history"]["valid_elbo"] and metrics["best_epoch"] in (1, 2)

    with pytest.raises(ConfigError, match="not past epoch 2"):
        resume_point.record_next_epoch(run, dest, 2)  # the run has not trained epoch 3 yet
    assert cli_main(["train", "vae", "--resume", "--out", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert resume_point.wait_for_epoch(run, 3, poll_seconds=0.01, timeout_seconds=1) == 3
    logged = read_run_history(run).valid_elbo[2]
    assert resume_point.record_next_epoch(run, dest, 2) == logged
    index = json.loads((dest / "index.json").read_text())
    assert index == {"tiny": {"epoch": 2, "next_epoch_valid_elbo": logged}}


def test_waiting_gives_up_after_the_timeout(tiny_vae_run):
    with pytest.raises(ConfigError, match="did not reach epoch 99"):
        resume_point.wait_for_epoch(tiny_vae_run, 99, poll_seconds=0.01, timeout_seconds=0.05)


def test_stop_sends_sigterm_to_the_lock_holder_only(tmp_path):
    """A process that holds the run's lock gets SIGTERM; a pid left in the file by a process that
    no longer holds it (its number may belong to another process by now) gets nothing."""
    holder = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"
    )
    lock = tmp_path / ".lock"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    trainer = None
    try:
        lock.write_text(f"{bystander.pid}\n")  # a stale pid: nobody holds the lock
        assert resume_point.stop_training(tmp_path) is None
        trainer = subprocess.Popen(
            [sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE, text=True
        )
        assert trainer.stdout.readline().strip() == "locked"
        lock.write_text(f"{trainer.pid}\n")  # what training writes once it holds the lock
        assert resume_point.stop_training(tmp_path) == trainer.pid
        assert trainer.wait(timeout=10) == -15 and bystander.poll() is None
    finally:
        for process in (bystander, trainer):
            if process is not None:
                process.kill()
                process.wait()
        if trainer is not None:
            trainer.stdout.close()
    assert resume_point.stop_training(tmp_path / "missing") is None


def test_a_folder_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    from analysis.common import run_study

    assert run_study(resume_point.main, ["--run", str(tmp_path), "--dest", str(tmp_path / "d")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path} is not a run folder (needs config.json and checkpoint.pt)"
    )
    assert not os.path.exists(tmp_path / "d")
    assert run_study(resume_point.main, ["--run", str(tmp_path), "--poll-seconds", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --poll-seconds needs positive numbers, got [-1.0]"


def test_main_copies_then_waits_for_the_next_epoch(tiny_vae_run, tmp_path):
    run = tmp_path / "tiny"
    shutil.copytree(tiny_vae_run, run, ignore=shutil.ignore_patterns(".lock"))
    dest = tmp_path / "runs-in-progress"
    argv = ["--run", str(run), "--dest", str(dest), "--poll-seconds", "0.01", "--timeout-hours", "1e-5"]
    with pytest.raises(ConfigError, match="did not reach epoch 3"):  # nothing trains epoch 3 here
        resume_point.main(argv)
    assert load_checkpoint(dest / "tiny" / "checkpoint.pt")["epoch"] == 2
    assert not (dest / "index.json").exists()  # recorded only once the next epoch exists
