"""Atomic file writes: readers see the old file or the new one, never a partial file.

Used by everything that saves artefacts (vocab.json, tokenizers, checkpoints). Knows nothing of
what is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Read once, at import (single-threaded): os.umask can only be read by setting it, which would race
# with files created by other threads.
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def default_file_mode() -> int:
    """The mode a plainly created file gets under the current umask (usually 0644)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode a plainly created folder gets under the current umask (usually 0755)."""
    return 0o777 & ~_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def staging_directory(target: str | os.PathLike) -> Path:
    """A new empty folder beside ``target`` to build its replacement in (see :func:`swap_directory`)."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(staging, default_dir_mode())  # mkdtemp makes it 0700
    return staging


def swap_directory(staging: Path, target: str | os.PathLike, *, marker: str) -> None:
    """Put ``staging`` in ``target``'s place with renames only; the old folder survives any failure before.

    An existing ``target`` is replaced only if it holds ``marker`` (a file that says it is ours).
    """
    target = Path(target).absolute()
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # an empty folder holds nothing to keep
    if not target.exists():
        os.replace(staging, target)
        return
    if not (target / marker).exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(f"{target} exists and has no {marker}: refusing to replace it")
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
