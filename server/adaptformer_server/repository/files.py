"""Writing store files: atomic writes whose temp files name their writer, and telling leftovers of a crash from a
write in progress (several servers, on several hosts, may share one store)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

from adaptformer.atomic import atomic_write as _library_atomic_write

__all__ = ["HOST", "atomic_write", "fsync_dir", "orphan"]

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_OWNER = re.compile(r"\.([0-9a-f]{8})-(\d+)-[^.]*\.tmp$")  # .<name>.<host>-<pid>-<random>.tmp


def atomic_write(path: Path, data: bytes) -> None:
    """The library's atomic write (temp file, fsync, rename), its temp file named after this host and process."""
    _library_atomic_write(path, data, tag=f"{HOST}-{os.getpid()}-")


def orphan(name: str) -> bool:
    """Whether a temp file was written on this host by a process that is gone."""
    m = _TEMP_OWNER.search(name)
    if m is None or m.group(1) != HOST:
        return False
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False  # alive (another user's), or not a process id
    return False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
