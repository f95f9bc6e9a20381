"""Commit the resume point of a training that outlives the session: runs-in-progress/NAME/.

A run of the Table 1 reproduction can take longer than a working session, and the machine does
not always keep ``~/pyro-vae-runs/`` between sessions (``runs-in-progress/README.md``). So at the
end of a session its state is copied into the repository, while it trains:

1. wait until the run's checkpoint holds epoch ``--at-epoch`` N (or later);
2. copy ``config.json`` and ``checkpoint.pt`` (the checkpoint is replaced atomically by training,
   so the copy is always whole), check the copy loads, and write ``metrics.json`` from its history;
3. wait for the next epoch and record its validation ELBO, as the uninterrupted run logged it, in
   ``runs-in-progress/index.json`` (``tests/test_runs_in_progress.py`` resumes the copy for that
   epoch and compares);
4. with ``--stop``, end the training process (the holder of the run folder's lock) with SIGTERM.

Snapshots are not copied: the points scored from them live in ``docs/results/iwae_curves.json``.

Example::

    python -m analysis.resume_point --run ~/pyro-vae-runs/iwae1l-iwae-k5-b100-paper-split \\
        --at-epoch 2600 --stop
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
from pathlib import Path

from pyro_vae.checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint
from pyro_vae.errors import ConfigError
from pyro_vae.run_folder import lock_holder
from pyro_vae.runs import CONFIG_NAME, read_run_history
from pyro_vae.train_state import METRICS_NAME, TrainHistory

from .common import check_positive, run_study

DEFAULT_DEST = Path(__file__).resolve().parents[1] / "runs-in-progress"
INDEX_NAME = "index.json"


def checkpoint_epoch(run_dir: Path) -> int:
    """The last epoch saved in ``run_dir``'s checkpoint (0 while it has none)."""
    path = run_dir / CHECKPOINT_NAME
    return int(load_checkpoint(path)["epoch"]) if path.is_file() else 0


def wait_for_epoch(run_dir: Path, epoch: int, *, poll_seconds: float, timeout_seconds: float) -> int:
    """Wait until ``run_dir`` has checkpointed ``epoch`` or later; return the epoch it holds.

    The checkpoint is only loaded again when its modification time changes, so waiting costs the
    training next to nothing.

    Raises
    ------
    ConfigError
        If ``timeout_seconds`` pass first.
    """
    path, seen, deadline = run_dir / CHECKPOINT_NAME, None, time.monotonic() + timeout_seconds
    while True:
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        if stamp != seen:
            seen, held = stamp, checkpoint_epoch(run_dir)
            if held >= epoch:
                return held
        if time.monotonic() >= deadline:
            raise ConfigError(f"{run_dir} did not reach epoch {epoch} within {timeout_seconds:.0f} s")
        time.sleep(poll_seconds)


def copy_resume_point(run_dir: Path, dest_root: Path) -> int:
    """Copy ``run_dir``'s config and checkpoint to ``dest_root/NAME`` and write its metrics.

    Each file is copied to a temporary name and renamed, so an interrupted copy never leaves a
    half-written checkpoint behind. Returns the epoch of the copied checkpoint.
    """
    dest = dest_root / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, CHECKPOINT_NAME):
        partial = dest / f".{name}.partial"
        shutil.copyfile(run_dir / name, partial)
        os.replace(partial, dest / name)
    copied = load_checkpoint(dest / CHECKPOINT_NAME)  # weights_only=True inside
    atomic_write_json(dest / METRICS_NAME, TrainHistory(**copied["history"]).metrics())
    return int(copied["epoch"])


def record_next_epoch(run_dir: Path, dest_root: Path, epoch: int) -> float:
    """Write ``index.json``'s entry for ``run_dir``: the copied epoch and the next one's valid ELBO.

    ``run_dir`` must have trained past ``epoch`` (:func:`wait_for_epoch`). The value comes from
    the checkpoint's history at full precision (the log prints two decimals).
    """
    history = read_run_history(run_dir)
    if history.epochs <= epoch:
        raise ConfigError(f"{run_dir} has trained {history.epochs} epochs, not past epoch {epoch}")
    next_elbo = float(history.valid_elbo[epoch])  # 0-based: the value of epoch + 1
    index_path = dest_root / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[run_dir.name] = {"epoch": epoch, "next_epoch_valid_elbo": next_elbo}
    atomic_write_json(index_path, dict(sorted(index.items())))
    return next_elbo


def stop_training(run_dir: Path) -> int | None:
    """Send SIGTERM to the process that holds ``run_dir``'s training lock; return its pid (None if none).

    Training replaces its checkpoint atomically, so ending it between two saves loses at most the
    epoch in progress, which ``pyro-vae train --resume`` trains again.
    """
    pid = lock_holder(run_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    return pid


def main(argv: list[str] | None = None) -> dict[str, float | int | None]:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.resume_point", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", type=Path, required=True, help="the run folder that is training")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="default: runs-in-progress/")
    parser.add_argument("--at-epoch", type=int, default=0, help="wait for this epoch first (default: now)")
    parser.add_argument("--stop", action="store_true", help="end the training once the next epoch is in")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="seconds between checks (default 1)")
    parser.add_argument("--timeout-hours", type=float, default=12.0, help="give up waiting after this long")
    args = parser.parse_args(argv)
    check_positive("--poll-seconds", [args.poll_seconds])
    check_positive("--timeout-hours", [args.timeout_hours])
    run_dir = args.run.expanduser()
    if not (run_dir / CONFIG_NAME).is_file() or not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"{run_dir} is not a run folder (needs {CONFIG_NAME} and {CHECKPOINT_NAME})")
    timeout = args.timeout_hours * 3600
    wait_for_epoch(run_dir, args.at_epoch, poll_seconds=args.poll_seconds, timeout_seconds=timeout)
    epoch = copy_resume_point(run_dir, args.dest)
    print(f"copied {run_dir.name} at epoch {epoch} to {args.dest / run_dir.name}")
    wait_for_epoch(run_dir, epoch + 1, poll_seconds=args.poll_seconds, timeout_seconds=timeout)
    next_elbo = record_next_epoch(run_dir, args.dest, epoch)
    print(f"epoch {epoch + 1} validation ELBO {next_elbo:.4f} recorded in {args.dest / INDEX_NAME}")
    pid = stop_training(run_dir) if args.stop else None
    if args.stop:
        print(f"sent SIGTERM to training process {pid}" if pid else "no training process to stop")
    return {"epoch": epoch, "next_epoch_valid_elbo": next_elbo, "stopped_pid": pid}


if __name__ == "__main__":
    raise SystemExit(run_study(main))
