"""What every study shares: its command-line edge, output folder and JSON writing.

A study's ``main(argv)`` parses its flags, runs, and writes ``<name>.json`` plus PNG figures to
``--out``. Errors the user can fix (:class:`~pyro_vae.errors.PyroVAEError`) end the program with
one line and exit code 2, as in the ``pyro-vae`` command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pyro_vae.checkpoint import atomic_write_json
from pyro_vae.errors import PyroVAEError


def study_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every study has: ``--out``, ``--device``, ``--data-dir``."""
    parser = argparse.ArgumentParser(prog=f"python -m analysis.{name}", description=description)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and the figures")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding MNIST/raw/*.gz")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_study(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Call a study's ``main`` and turn user errors into one line on stderr and exit code 2."""
    try:
        main(argv)
    except PyroVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def write_results(out_dir: Path, name: str, results: dict[str, Any]) -> Path:
    """Write ``out_dir/<name>.json`` atomically (strict JSON: NaN becomes null)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    atomic_write_json(path, results)
    return path


def save_figure(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
