"""Atomic files and safe checkpoints.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then moved
over the old one with ``os.replace`` (atomic on POSIX and Windows): a crash or a full disk in the
middle of a save leaves the previous checkpoint intact. Checkpoints are loaded with
``torch.load(..., weights_only=True)``, which unpickles only tensors and plain containers, so a
checkpoint file cannot run code; everything stored in one is such data.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, RunFolderError

CHECKPOINT_FORMAT = "pyro-vae-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one, whole.

    Raises
    ------
    RunFolderError
        If the file cannot be written (a full disk, a read-only folder, a file where the folder
        should be); the previous file, if any, is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        kept = "; the previous version is intact" if path.exists() else ""
        raise RunFolderError(f"cannot write {path} ({error.strerror or error}){kept}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    # Persist the rename itself; not possible (nor needed) on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN and infinities become ``null``), atomically."""
    text = json.dumps(_finite_or_none(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(value) for value in obj]
    return obj


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Save a checkpoint dictionary atomically, stamped with this project's format and version."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``).

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, or not a checkpoint of this project.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; a run folder is made by 'pyro-vae train' and holds {CHECKPOINT_NAME}"
        )
    try:
        with warnings.catch_warnings():
            # A foreign pickle may trigger torch's protocol notice before being refused below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable pyro-vae checkpoint ({first_line[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a pyro-vae checkpoint")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, this "
            f"pyro-vae reads version {CHECKPOINT_VERSION}"
        )
    return payload
