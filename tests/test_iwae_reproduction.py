"""The Table 1 reproduction: its evaluation script, its learning curves, and the shipped weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analysis import iwae_curves, iwae_table
from pyro_vae import RunConfig, TrainConfig, VAEConfig, evaluate_run, train_run
from pyro_vae.errors import ConfigError
from pyro_vae.runs import read_run_history

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "results" / "iwae_table.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder of runs: 'done' (2 of 2 epochs, snapshots at 1 and 2) and 'unfinished' (1 of 3)."""
    folder = tmp_path_factory.mktemp("runs")
    model = VAEConfig(z_dim=4, hidden_sizes=(32,))
    done = RunConfig(model=model, train=TrainConfig(epochs=2, subset=400, data_split="iwae"))
    train_run(done, folder / "done", snapshot_epochs=(1, 2), progress=False, log=None)
    unfinished = RunConfig(model=model, train=TrainConfig(epochs=1, subset=400))
    train_run(unfinished, folder / "unfinished", progress=False, log=None)
    config = json.loads((folder / "unfinished" / "config.json").read_text())
    config["train"]["epochs"] = 3  # as if interrupted after its first epoch
    (folder / "unfinished" / "config.json").write_text(json.dumps(config))
    return folder


def _row(run: str) -> iwae_table.Row:
    return iwae_table.Row("tiny", run, "--epochs 2", "a tiny VAE", -86.76, 19)


def test_a_row_ships_weights_that_reproduce_its_check(runs, tmp_path):
    row = iwae_table.evaluate_row(
        _row("done"), runs, tmp_path, num_samples=10, subset=100, allow_unfinished=False,
        device="cpu", data_dir=None, progress=False,
    )  # fmt: skip
    assert row["num_images"] == 100 and row["epochs"] == row["epochs_planned"] == 2
    assert row["elbo"] <= row["log_likelihood"] and 0 <= row["active_units"] <= 4
    assert row["data_split"] == "iwae" and row["command"].endswith(f"--out {runs / 'done'}")
    check = row["check"]
    report, _ = evaluate_run(
        tmp_path / "tiny", num_samples=check["num_samples"], subset=check["num_images"], progress=False
    )
    assert report["log_likelihood"] == pytest.approx(check["log_likelihood"], abs=1e-6)
    assert "epoch 2 of 2" in row["weights"] or "epoch 1 of 2" in row["weights"]


def test_an_unfinished_run_is_refused_unless_asked(runs, tmp_path):
    with pytest.raises(ConfigError, match="1 of 3 epochs"):
        iwae_table.evaluate_row(
            _row("unfinished"), runs, tmp_path, num_samples=5, subset=20, allow_unfinished=False,
            device="cpu", data_dir=None, progress=False,
        )  # fmt: skip
    row = iwae_table.evaluate_row(
        _row("unfinished"), runs, tmp_path, num_samples=5, subset=20, allow_unfinished=True,
        device="cpu", data_dir=None, progress=False,
    )  # fmt: skip
    assert (row["epochs"], row["epochs_planned"]) == (1, 3)


def test_curves_score_each_snapshot_once(runs, capsys):
    done = runs / "done"
    history = read_run_history(done)
    scores = iwae_curves.score_snapshots(
        done, history, {}, num_samples=5, test_images=30, device="cpu", data_dir=None, progress=False
    )
    assert list(scores) == ["1", "2"]
    assert 0 < scores["1"]["wall_seconds"] < scores["2"]["wall_seconds"]
    assert scores["2"]["test"] > scores["1"]["test"] - 5  # one more epoch does not ruin the model
    capsys.readouterr()
    again = iwae_curves.score_snapshots(
        done, history, {"1": scores["1"]}, num_samples=5, test_images=30, device="cpu", data_dir=None,
        progress=False,
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert again == scores and "epoch 2:" in printed and "epoch 1:" not in printed  # only the new one scored
    # a stored point whose weights are not the snapshot's (another run in this folder) is scored again
    stale = {"1": {**scores["1"], "weights": "0123456789abcdef", "test": 0.0}}
    fresh = iwae_curves.score_snapshots(
        done, history, stale, num_samples=5, test_images=30, device="cpu", data_dir=None, progress=False
    )
    assert fresh == scores and "epoch 1:" in capsys.readouterr().out


def test_table_and_curves_commands_on_a_tiny_run(tmp_path):
    """``python -m analysis.iwae_table`` and ``analysis.iwae_curves`` end to end, on a folder of runs
    whose VAE row is a tiny run with snapshots."""
    runs = tmp_path / "runs"
    config = RunConfig(model=VAEConfig(z_dim=4, hidden_sizes=(32,)), train=TrainConfig(epochs=2, subset=300))
    train_run(config, runs / iwae_table.ROWS["vae-k1"].run, snapshot_epochs=(1, 2), progress=False, log=None)
    # --device is left at its default, auto: every step of the table must resolve it (a 55-minute
    # evaluation was once lost to the active-unit count receiving "auto" after it)
    common = ["--runs", str(runs), "--out", str(tmp_path / "results"), "--no-progress"]
    pretrained = tmp_path / "pretrained"
    table = iwae_table.main(
        [*common, "--rows", "vae-k1", "-k", "5", "--subset", "40", "--pretrained", str(pretrained)]
    )
    (row,) = table["rows"]
    assert row["name"] == "vae-k1" and row["paper"]["log_likelihood"] == -86.76
    assert (tmp_path / "pretrained" / "vae-k1" / "checkpoint.pt").is_file()
    stored = json.loads((tmp_path / "results" / "iwae_table.json").read_text())
    assert stored["rows"][0]["log_likelihood"] == row["log_likelihood"]
    curves = iwae_curves.main([*common, "-k", "4", "--test-images", "20"])
    assert list(curves["runs"]["vae-k1"]["snapshots"]) == ["1", "2"]
    assert (tmp_path / "results" / "iwae_curves.png").is_file()
    # the run folder gone (another machine, a later session): its stored curve is kept, not dropped
    shutil.rmtree(runs / iwae_table.ROWS["vae-k1"].run)
    again = iwae_curves.main([*common, "-k", "4", "--test-images", "20"])
    assert again["runs"]["vae-k1"] == json.loads(json.dumps(curves["runs"]["vae-k1"]))
