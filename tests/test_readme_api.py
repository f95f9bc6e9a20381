"""The README's Python snippets under "Using the library" run (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def library_examples() -> list[str]:
    section = README.read_text().split("## Using the library", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.+?)\n```", section, flags=re.S)


def api_example() -> str:
    (example,) = [block for block in library_examples() if "train_run" in block]
    return example


def test_first_library_example_trains_a_vae_from_python():
    """The section's first snippet (build_vae, load_mnist, train) as written, but one epoch instead of 5."""
    first = library_examples()[0]
    assert "epochs=5" in first and "train_run" not in first
    namespace: dict = {}
    exec(compile(first.replace("epochs=5", "epochs=1"), str(README), "exec"), namespace)
    history = namespace["history"]
    assert history.epochs == 1 and len(history.valid_elbo) == 1
    # one epoch of the tutorial's network on 50,000 digits has learned digits (pyro-vae train vae logs
    # about -148 nats after its first epoch); a step that does not train would stay far below
    assert -160 < history.valid_elbo[0] < -100


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
