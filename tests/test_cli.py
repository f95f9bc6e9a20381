"""The pyro-vae command: smoke runs, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from pyro_vae.builders import PRESETS
from pyro_vae.cli import main
from pyro_vae.data import MNIST_FILES, resolve_raw_dir

RUN_FILES = {"config.json", "checkpoint.pt", "metrics.json", "samples.png", "reconstructions.png", "elbo.png"}
SMALL_FLAGS = ["--subset", "500", "--hidden", "64", "--z-dim", "4", "--device", "cpu", "--no-progress"]


def run_cli(*argv):
    """Run main() in-process; return (exit code, stdout, stderr) via SystemExit or return value."""
    try:
        return main(list(argv))
    except SystemExit as exit_:
        return exit_.code


def test_train_writes_every_file_and_improving_finite_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "vae", "--epochs", "2", *SMALL_FLAGS, "--lr", "3e-3", "--out", str(out)) == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["train_elbo"]) == len(metrics["valid_elbo"]) == 2
    assert all(math.isfinite(v) for v in metrics["train_elbo"] + metrics["valid_elbo"])
    assert metrics["valid_elbo"][1] > metrics["valid_elbo"][0]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["z_dim"] == 4 and config["model"]["hidden_sizes"] == [64]
    assert "final validation ELBO" in capsys.readouterr().out

    # resume to 3 epochs; the saved model settings are kept
    assert (
        run_cli(
            "train", "vae", "--epochs", "3", "--out", str(out), "--resume", "--device", "cpu", "--no-progress"
        )
        == 0
    )
    assert len(json.loads((out / "metrics.json").read_text())["valid_elbo"]) == 3

    # a conflicting flag on resume, and an existing run without --resume, are refused
    assert run_cli("train", "vae", "--epochs", "4", "--z-dim", "8", "--out", str(out), "--resume") == 2
    assert "trained with --z-dim 4" in capsys.readouterr().err
    assert run_cli("train", "vae", "--epochs", "1", *SMALL_FLAGS, "--out", str(out)) == 2
    assert "already holds a run" in capsys.readouterr().err

    assert (
        run_cli("sample", str(out), "--num", "16", "--out", str(tmp_path / "s.png"), "--device", "cpu") == 0
    )
    assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "vae", "--epochs", "-1"], "--epochs: must be >= 0"),
        (["train", "vae", "--z-dim", "0"], "--z-dim: must be a positive integer"),
        (["train", "vae", "--likelihood", "poisson"], "invalid choice: 'poisson'"),
        (["train", "vae", "--lr", "fast"], "--lr: must be a number"),
        (["sample", "no/such/run"], "run folder no/such/run does not exist"),
        (["train", "vae", "--epochs", "1", "--out", "x", "--resume"], "cannot resume"),
    ],
)
def test_bad_arguments_give_one_line_errors_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupted_data_is_named_without_traceback(tmp_path):
    """Through the installed entry point: exit code 2 and one line naming the bad file."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for spec in MNIST_FILES.values():
        shutil.copy(resolve_raw_dir(None) / spec.filename, raw / spec.filename)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"truncated")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            "vae",
            "--epochs",
            "1",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train-images-idx3-ubyte.gz is corrupted or truncated" in lines[0]


def test_sample_refuses_a_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "vae", "model": {}, "train": {}}))
    assert run_cli("sample", str(tmp_path)) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_cli_preset_and_recipe_flags(tmp_path, capsys):
    out = tmp_path / "preset"
    code = run_cli(
        "train", "vae", "--preset", "iwae-1layer", "--epochs", "2", "--batch-size", "100", "--subset", "300",
        "--objective", "iwae", "-k", "3", "--kl-warmup", "0.5", "--device", "cpu", "--no-progress",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    preset = PRESETS["iwae-1layer"]
    assert config["model"]["hidden_sizes"] == [200, 200] and config["model"]["activation"] == "tanh"
    assert config["model"]["z_dim"] == 50
    assert config["train"]["lr_schedule"] == "iwae" and config["train"]["adam_eps"] == 1e-4
    assert config["train"]["init_output_bias"] is preset["train"]["init_output_bias"] is True
    assert config["train"]["batch_size"] == 100  # the flag beside the preset wins
    assert config["train"]["num_particles"] == 3 and config["train"]["objective"] == "iwae"
    assert config["train"]["data_split"] == "iwae"  # 59,600 training images, the last 400 validate
    from pyro_vae.runs import load_eval_data, read_run_config

    assert load_eval_data(read_run_config(out), "valid")[0].shape[0] == 400
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["learning_rate"] == pytest.approx([1e-3, 1e-3 * 10 ** (-1 / 7)])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-particles", "0"], "--num-particles"),
        (["--adam-betas", "0.9", "1.0"], "--adam-betas"),
        (["--kl-warmup", "-1"], "--kl-warmup"),
        (["--lr-schedule", "linear"], "--lr-schedule"),
        (["--activation", "gelu"], "--activation"),
        (["--clip-grad-norm", "0"], "--clip-grad-norm"),
        (["--lr-milestones", "3"], "step schedule"),
        (["--objective", "jit-meanfield", "--kl-warmup", "1"], "KL weight"),
    ],
)
def test_cli_bad_recipe_flags_give_one_line(tmp_path, capsys, flags, message):
    code = run_cli("train", "vae", "--subset", "200", "--epochs", "1", "--hidden", "16", "--device", "cpu",
                   "--no-progress", "--out", str(tmp_path / "r"), *flags)  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_the_run_api_is_exported_and_takes_device_auto(tmp_path):
    """A notebook's three calls: train a run folder, reload it, evaluate it, all with device="auto"."""
    from pyro_vae import RunConfig, TrainConfig, VAEConfig, evaluate_run, load_run, train_run

    config = RunConfig(model=VAEConfig(z_dim=3, hidden_sizes=(16,)), train=TrainConfig(epochs=1, subset=300))
    train_run(config, tmp_path / "run", device="auto", progress=False, log=None)
    loaded_config, model = load_run(tmp_path / "run", device="auto")
    assert loaded_config == config and not model.training
    report, summary = evaluate_run(tmp_path / "run", num_samples=20, subset=40, device="auto", progress=False)
    assert report["num_images"] == 40 and report["device"] in ("cpu", "cuda")
    assert summary.log_likelihood.shape == (40,)
    assert report["log_likelihood"] == pytest.approx(float(summary.log_likelihood.double().mean()), abs=1e-4)


def test_overwrite_replaces_a_run_and_keeps_other_files(tmp_path, capsys):
    """Re-running a notebook cell: overwrite=True deletes the run's own files first, nothing else."""
    from pyro_vae import RunConfig, TrainConfig, VAEConfig, train_run
    from pyro_vae.errors import ConfigError

    out = tmp_path / "run"
    config = RunConfig(model=VAEConfig(z_dim=3, hidden_sizes=(16,)), train=TrainConfig(epochs=2, subset=300))
    train_run(config, out, snapshot_epochs=(2,), progress=False, log=None)
    assert (out / "snapshots" / "epoch-00002.pt").is_file()
    (out / "notes.txt").write_text("mine")
    shorter = RunConfig(model=config.model, train=TrainConfig(epochs=1, subset=300))
    _, history = train_run(shorter, out, overwrite=True, progress=False, log=None)
    assert history.epochs == 1 and len(json.loads((out / "metrics.json").read_text())["valid_elbo"]) == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "snapshots" / "epoch-00002.pt").exists()  # the old run's snapshots went with it
    with pytest.raises(ConfigError, match="choose one"):
        train_run(shorter, out, overwrite=True, resume=True, progress=False, log=None)
    assert run_cli("train", "vae", *SMALL_FLAGS, "--epochs", "1", "--out", str(out)) == 2
    assert "--overwrite to replace it" in capsys.readouterr().err
    assert run_cli("train", "vae", *SMALL_FLAGS, "--epochs", "1", "--out", str(out), "--overwrite") == 0


def test_export_keeps_one_set_of_weights_that_everything_loads(tmp_path, tiny_vae_run, capsys):
    """An exported folder scores exactly like the run it came from, samples, and refuses --resume."""
    from pyro_vae import evaluate_run
    from pyro_vae.checkpoint import load_checkpoint

    out = tmp_path / "shared"
    assert run_cli("export", str(tiny_vae_run), "--out", str(out)) == 0
    assert "best (epoch" in capsys.readouterr().out
    state = load_checkpoint(out)
    assert state["exported"]["weights"] == "best" and "optimizer_state" not in state
    assert (out / "checkpoint.pt").stat().st_size < 0.5 * (tiny_vae_run / "checkpoint.pt").stat().st_size
    original, _ = evaluate_run(tiny_vae_run, num_samples=20, subset=30, progress=False)
    shared, _ = evaluate_run(out, num_samples=20, subset=30, progress=False)
    assert shared["log_likelihood"] == original["log_likelihood"]
    assert run_cli("sample", str(out), "--num", "4") == 0 and (out / "samples.png").is_file()
    assert run_cli("export", str(tiny_vae_run), "--out", str(out)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli("train", "vae", "--resume", "--epochs", "3", "--out", str(out), "--no-progress") == 2
    assert "exported weights only" in capsys.readouterr().err


def test_export_at_half_precision_halves_the_file_and_loads_as_float32(tmp_path, tiny_vae_run, capsys):
    from pyro_vae import evaluate_run, load_run
    from pyro_vae.checkpoint import load_checkpoint

    full, half = tmp_path / "full", tmp_path / "half"
    assert run_cli("export", str(tiny_vae_run), "--out", str(full)) == 0
    assert run_cli("export", str(tiny_vae_run), "--out", str(half), "--dtype", "float16") == 0
    assert "stored as float16" in capsys.readouterr().out.splitlines()[-1]
    assert load_checkpoint(half)["model_state"]["encoder.body.0.weight"].dtype == torch.float16
    ratio = (half / "checkpoint.pt").stat().st_size / (full / "checkpoint.pt").stat().st_size
    assert 0.45 < ratio < 0.6
    _, model = load_run(half)
    _, reference = load_run(full)
    for (name, value), (_, exact) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert value.dtype == torch.float32  # the model stays float32; only the stored values are rounded
        torch.testing.assert_close(value, exact.to(torch.float16).float(), msg=name)
    rounded, _ = evaluate_run(half, num_samples=20, subset=30, progress=False)
    original, _ = evaluate_run(full, num_samples=20, subset=30, progress=False)
    assert abs(rounded["log_likelihood"] - original["log_likelihood"]) < 0.05
