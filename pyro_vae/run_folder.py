"""Run folders as places to write: one writer at a time, and one-line errors when writing fails.

One writer per run folder: an exclusive lock that names its holder and dies with it.

Training takes ``RUN/.lock`` with ``fcntl.flock`` before it touches the folder and holds it until
it returns. The kernel releases the lock when its process ends, however it ends (``kill -9``
too), so a lock file left by a dead process is simply taken over; the file holds the pid of the
current holder, for the message a second writer gets. Readers (``evaluate``, ``sample``,
``complete``) take no lock: checkpoints are replaced atomically, so a reader sees the previous
checkpoint or the new one, whole.

Where ``fcntl`` does not exist (Windows) the lock file is created with ``O_CREAT | O_EXCL`` and
a file whose pid no longer runs is taken over.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import RunFolderError

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive training lock of ``run_dir`` (created if missing) inside the block.

    Raises
    ------
    RunFolderError
        ``RUN is in use by process N`` if another live process holds it, or if the folder
        cannot be made (a file stands where it should be, no permission).
    """
    run_dir = make_run_folder(run_dir)
    path = run_dir / LOCK_NAME
    if fcntl is None:  # pragma: no cover - Windows
        with _exclusive_file_lock(path):
            yield run_dir
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunFolderError(
            f"cannot write to the run folder {run_dir} ({error.strerror or error})"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"{run_dir} is in use by process {_read_pid(path)}; wait for it to finish or choose "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield run_dir
    finally:
        os.close(fd)  # releases the flock


def lock_holder(run_dir: str | os.PathLike) -> int | None:
    """The pid of the live process that holds ``run_dir``'s training lock, or None if none does.

    The pid in a lock file left by a dead process may belong to another process by now, so the
    lock itself is asked (a shared ``flock`` fails while training holds the exclusive one).
    """
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return None
    pid = _read_pid(path)
    if fcntl is None:  # pragma: no cover - Windows: the file exists only while its holder lives
        return int(pid) if pid.isdigit() and _process_alive(int(pid)) else None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return int(pid) if pid.isdigit() else None
    finally:
        os.close(fd)  # releases the shared lock if it was taken
    return None


def make_run_folder(run_dir: str | os.PathLike) -> Path:
    """Create ``run_dir`` (and its parents) or say in one line why it cannot be a folder."""
    run_dir = Path(run_dir)
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise RunFolderError(f"{folder} is a file, not a folder; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot make the run folder {run_dir} ({error.strerror or error})") from None
    if not os.access(run_dir, os.W_OK):
        raise RunFolderError(f"cannot write to the run folder {run_dir} (permission denied)")
    return run_dir


@contextlib.contextmanager
def writing_into(folder: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block (a full disk, no permission) into one line."""
    try:
        yield
    except OSError as error:
        raise RunFolderError(f"cannot write into {folder} ({error.strerror or error})") from None


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def _exclusive_file_lock(path: Path) -> Iterator[None]:  # pragma: no cover - Windows
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            pid = _read_pid(path)
            if pid.isdigit() and _process_alive(int(pid)):
                raise RunFolderError(f"{path.parent} is in use by process {pid}") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise RunFolderError(f"cannot take the lock {path}")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:  # pragma: no cover - Windows
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
