"""The resume points committed in runs-in-progress/ continue their runs exactly.

A training longer than a session carries its checkpoint across sessions in the repository
(runs-in-progress/README.md says why and how). Each entry of ``runs-in-progress/index.json``
records the validation ELBO that the uninterrupted run logged for the epoch after the committed
one; resuming the committed checkpoint for that one epoch must give the same number, which checks
the whole resume path: weights, optimizer moments, learning-rate schedule, minibatch order and
random generators.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main as cli_main
from pyro_vae.runs import read_run_config, read_run_history

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "runs-in-progress"
INDEX = json.loads((FOLDER / "index.json").read_text()) if (FOLDER / "index.json").is_file() else {}


def test_every_committed_run_folder_is_indexed():
    folders = {path.name for path in FOLDER.iterdir() if path.is_dir()} if FOLDER.is_dir() else set()
    assert folders == set(INDEX), "runs-in-progress/index.json and the folders beside it disagree"


@pytest.mark.parametrize("name", sorted(INDEX))
def test_committed_checkpoint_resumes_to_the_logged_next_epoch(name, tmp_path):
    entry, source = INDEX[name], FOLDER / name
    checkpoint = load_checkpoint(source / "checkpoint.pt")  # weights_only=True inside
    config = read_run_config(source)
    assert checkpoint["epoch"] == entry["epoch"]
    assert entry["epoch"] < config.train.epochs, "a finished run belongs in pretrained/, not here"

    run = tmp_path / name
    shutil.copytree(source, run)
    next_epoch = entry["epoch"] + 1
    assert cli_main(["train", config.kind, "--resume", "--out", str(run), "--epochs", str(next_epoch)]) == 0
    history = read_run_history(run)
    assert history.epochs == next_epoch
    # The same arithmetic on another CPU may round differently; 0.05 nats is far below what a
    # wrong optimizer state, schedule or minibatch order changes in one epoch (about 0.1 to 1).
    assert history.valid_elbo[-1] == pytest.approx(entry["next_epoch_valid_elbo"], abs=0.05)
