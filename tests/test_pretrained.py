"""The shipped weights reproduce the numbers stored beside them, and draw digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyro_vae import evaluate_run
from pyro_vae.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
ROWS = json.loads((ROOT / "docs" / "results" / "iwae_table.json").read_text())["rows"]


def test_the_table_ships_weights_for_every_row():
    assert ROWS, "docs/results/iwae_table.json has no rows"
    for row in ROWS:
        folder = ROOT / row["pretrained"]
        assert (folder / "checkpoint.pt").is_file() and (folder / "config.json").is_file(), folder
        # best weights only, a few MB: the IWAE network 1.8 MB, the tutorial's 2.8 M weights at float16 5.7 MB
        assert (folder / "checkpoint.pt").stat().st_size < 6 * 2**20


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row["name"])
def test_shipped_weights_reproduce_their_check(row, tmp_path):
    """500 test images at K = 100 from the shipped folder against the value stored when it was made
    (same eval seed, same binarization; the tolerance covers float summation order only)."""
    check = row["check"]
    report, _ = evaluate_run(
        ROOT / row["pretrained"], num_samples=check["num_samples"], subset=check["num_images"],
        device="cpu", progress=False,
    )  # fmt: skip
    assert report["log_likelihood"] == pytest.approx(check["log_likelihood"], abs=0.02)
    assert row["log_likelihood"] >= row["elbo"]
    out = tmp_path / "samples.png"
    assert cli_main(["sample", str(ROOT / row["pretrained"]), "--num", "16", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
