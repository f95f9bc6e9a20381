"""The README's "Extending" example runs as written: its module, its commands in new processes,
and a correct Student-t density."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_vae.builders import GUIDES, LIKELIHOODS, PRIORS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Appended to the README's training command: argparse keeps the last value of a flag.
SMALL = [
    "--epochs",
    "1",
    "--subset",
    "300",
    "--hidden",
    "32",
    "--z-dim",
    "4",
    "--device",
    "cpu",
    "--no-progress",
]


def extending_section() -> str:
    return README.read_text().split("## Extending", 1)[1].split("\n## ", 1)[0]


def extension_module() -> str:
    (code,) = re.findall(r"```python\n(.+?)\n```", extending_section(), flags=re.S)
    return code


def extension_commands() -> list[list[str]]:
    (block,) = re.findall(r"```bash\n(.+?)\n```", extending_section(), flags=re.S)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line.removeprefix("PYTHONPATH=. ")) for line in lines if line.strip()]


@pytest.fixture
def clean_registries(monkeypatch):
    for name, registry in (("LIKELIHOODS", LIKELIHOODS), ("PRIORS", PRIORS), ("GUIDES", GUIDES)):
        monkeypatch.setattr(f"pyro_vae.builders.{name}", dict(registry))


def test_the_module_defines_a_correct_student_t_likelihood(clean_registries):
    from pyro_vae import builders

    namespace: dict = {}
    exec(compile(extension_module(), str(README), "exec"), namespace)
    student_t = namespace["StudentTLikelihood"](df=4.0, scale=0.2)
    params, x = torch.randn(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)
    expected = stats.t(4.0, torch.sigmoid(params).numpy(), 0.2).logpdf(x.numpy()).sum(-1)
    assert np.allclose(student_t(params).log_prob(x).numpy(), expected, atol=1e-9)
    assert {"student-t"} <= set(builders.LIKELIHOODS) and "laplace" in builders.PRIORS
    assert "student-t" in builders.GUIDES


def test_commands_train_and_a_new_process_evaluates_and_samples(tmp_path):
    (tmp_path / "my_extensions.py").write_text(extension_module())
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    train, evaluate, sample = extension_commands()
    assert train[:2] == ["pyro-vae", "train"] and evaluate[1] == "evaluate" and sample[1] == "sample"
    out = tmp_path / "runs" / "student-t"
    commands = [
        [*train, *SMALL, "--out", str(out)],
        [*evaluate[:2], str(out), *evaluate[3:], "--subset", "20", "-k", "10", "--no-progress"],
        [*sample[:2], str(out)],
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "pyro_vae", *command[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["plugins"] == ["my_extensions"]
    assert config["model"]["likelihood_options"] == {"df": 5} and config["model"]["guide_options"] == {
        "df": 4
    }
    report = json.loads((out / "eval.json").read_text())
    assert np.isfinite(report["log_likelihood"]) and report["elbo"] <= report["log_likelihood"]
    assert (out / "samples.png").is_file()
    # Without the module the run cannot be rebuilt, and the error says which module to import.
    missing = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "evaluate", str(out), "-k", "2", "--subset", "2"],
        cwd=out, env={**env, "PYTHONPATH": ""}, capture_output=True, text=True,  # python -m adds the cwd
    )  # fmt: skip
    assert missing.returncode == 2 and "cannot import the plugin module 'my_extensions'" in missing.stderr
