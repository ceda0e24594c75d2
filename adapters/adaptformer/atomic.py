"""Atomic file writes: a crash leaves the old file or the new one, never half of it (no torch).

Adapter files, training checkpoints, the server's store and its index are all written with :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes, tag: str = "") -> None:
    """Writes ``data`` to ``path`` so that a crash leaves the old file or the new one, never half of it.

    The temp file is ``.<name>.<tag><random>.tmp`` beside ``path``; ``tag`` lets a caller name the writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{tag}", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; an adapter store is read by other users/containers
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
