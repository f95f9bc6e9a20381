"""The README's five-line Python API example runs as written (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    section = README.read_text().split("## Using the library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    (example,) = [block for block in blocks if "train_run" in block]
    return example


def test_api_example_trains_evaluates_and_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    # The example's subset keeps it small already; progress bars and logs are its own business.
    exec(compile(api_example(), str(README), "exec"), namespace)
    assert namespace["history"].epochs == 2 and (tmp_path / "runs" / "api-demo" / "checkpoint.pt").is_file()
    report = namespace["report"]
    assert report["num_images"] == 500 and report["num_samples"] == 100
    assert report["elbo"] <= report["log_likelihood"] < 0
    assert namespace["digits"].shape == (16, 784)
    exec(compile(api_example(), str(README), "exec"), namespace)  # a re-run of the cell overwrites
    assert namespace["history"].epochs == 2
