"""Moving a store file the server can never read out of the way of start-up and the watcher: into
``.quarantine/`` with a ``.reason`` note beside it, logged and counted."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from adaptformer.errors import AdapterFormatError
from adaptformer.metadata import NewerFormatError
from adaptformer.safetensors_header import IncompleteFile
from adaptformer_server.repository.files import fsync_dir
from adaptformer_server.repository.names import SUFFIX
from adaptformer_server.repository.record import Stamp

__all__ = ["QUARANTINE", "Quarantine", "quarantinable"]

log = logging.getLogger("adaptformer_server.store")

QUARANTINE = ".quarantine"


def quarantinable(error: BaseException) -> bool:
    """Whether a store file that failed with ``error`` is broken for good (moved aside), rather than still being
    copied in (it may grow) or written by a newer server (which can read it)."""
    return isinstance(error, AdapterFormatError) and not isinstance(error, (IncompleteFile, NewerFormatError))


class Quarantine:
    """The ``.quarantine/`` folder of a store.

    Args:
        root: The store directory.
        on_moved: Called with the task name whenever a file is moved (a metric).
    """

    def __init__(self, root: Path, on_moved: Callable[[str], None] | None = None) -> None:
        self.folder = root / QUARANTINE
        self._on_moved = on_moved

    def move(self, path: Path, task: str, name: str, reason: str, stamp: Stamp | None = None) -> bool:
        """Moves ``path`` to ``.quarantine/<name>.<time>.safetensors`` with a ``.reason`` note; returns whether
        it moved.

        Args:
            path: The file (a current file or a kept version).
            task: Its task (for the count).
            name: What the quarantined file's name starts with (``task``, ``task@version``).
            reason: Why (written to the note and the log).
            stamp: When given, only the file with exactly this stamp is moved: when the name holds another file by
                now (a replica replaced it), nothing is.
        """
        try:
            if stamp is not None and Stamp.of(path.stat()) != stamp:
                return False
            self.folder.mkdir(exist_ok=True)
            suffix = f"-{stamp.ino}" if stamp is not None else ""
            moved = self.folder / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}{suffix}{SUFFIX}"
            os.replace(path, moved)
        except FileNotFoundError:
            return False  # gone meanwhile (deleted, or quarantined by another server)
        except OSError as e:
            log.warning("cannot move %s%s to %s/: %s", name, SUFFIX, QUARANTINE, e)
            return False
        with contextlib.suppress(OSError):  # the move is what matters; the note and the fsync are a courtesy
            moved.with_suffix(".reason").write_text(reason[:4000] + "\n")
            fsync_dir(path.parent)
        log.warning("skipping %s%s: %s (quarantined: moved to %s/%s)", name, SUFFIX, reason, QUARANTINE, moved.name)
        if self._on_moved is not None:
            self._on_moved(task)
        return True
