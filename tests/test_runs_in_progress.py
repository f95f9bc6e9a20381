"""The resume points committed in runs-in-progress/ continue their runs.

A training longer than a session carries its checkpoint across sessions in the repository
(runs-in-progress/README.md says why and how). Each entry of ``runs-in-progress/index.json``
records the validation ELBO that the uninterrupted run logged for the epoch after the committed
one; resuming the committed checkpoint for that one epoch must land within the sampling noise of
that number.

Not to the last digit: the validation ELBO draws one z per image from the training process's
random stream, and a resumed jit-iwae run does not continue that stream draw for draw (measured
on the IWAE k = 5 run when its committed resume point was epoch 1,000: resumed -93.03 against the
logged -92.79; the numbers below come from that checkpoint too). The noise itself
was measured there: 20 fresh draws of the validation ELBO spread with a standard deviation of
0.21 nats. Perturbing the resumed state changed far less (weights by 1e-7 relative: 0.000 nats;
Adam's moments reset: 0.008; another minibatch order: 0.014). So the test checks that the
committed checkpoint loads, resumes and holds trained weights, not exactness: the tolerance of
1 nat (about 5 standard deviations) catches an untrained checkpoint (epoch 1: -136.48), only
just one of epoch 500 (its logged validation ELBO -93.94, 1.15 nats off), and not one a hundred
epochs stale.
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


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")  # jit-iwae runs
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
    # 1 nat: about 5 standard deviations of the validation ELBO's sampling noise (module docstring)
    assert history.valid_elbo[-1] == pytest.approx(entry["next_epoch_valid_elbo"], abs=1.0)
