"""Atomic file writes: readers see the old file or the new one, never a partial file.

Used by everything that saves artefacts (vocab.json, tokenizers, checkpoints). Knows nothing of
what is written.
"""

from __future__ import annotations

import os
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


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def default_file_mode() -> int:
    """The mode a plainly created file gets under the current umask (usually 0644)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode a plainly created folder gets under the current umask (usually 0755)."""
    return 0o777 & ~_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))
