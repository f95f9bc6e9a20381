"""Write one benchmark's section of ``benchmarks/RESULTS.md`` without touching the others.

Each benchmark owns the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; a run
replaces its own section (or appends it) and records the machine it ran on.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import pyro
import torch

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is written by the script it names; rerun it to refresh it.\n"


def machine_description() -> str:
    """CPU model, threads, GPU (if used), library versions and the date, on one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}; "
        f"{datetime.date.today().isoformat()}"
    )


def write_section(name: str, body: str, path: Path = RESULTS_PATH) -> None:
    """Replace (or append) the section ``name`` of the results file with ``body``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def publish(
    name: str, title: str, setup: str, columns: list[str], rows: list[str], *, write: bool = True
) -> str:
    """Print a benchmark's section and (``write``) store it in the results file under ``name``.

    The section is the ``## title``, the machine it ran on, a sentence on the ``setup`` and a table
    with ``columns`` (a name each; a leading ``>`` right-aligns the column) and the ``rows``.
    """
    header = "| " + " | ".join(column.lstrip(">") for column in columns) + " |"
    rule = "| " + " | ".join("---:" if column.startswith(">") else "---" for column in columns) + " |"
    body = "\n".join(
        [f"## {title}", "", f"Machine: {machine_description()}. {setup}", "", header, rule, *rows]
    )
    if write:
        write_section(name, body)
    print(body)
    return body
