"""Traffic splits: a task's unpinned requests shared between kept versions by weight (canary roll-outs).

A split lives in the store, one small JSON file per task (``.splits/<task>.json``, written atomically), so every
server sharing the store reads the same split: a server's watcher polls the folder as it polls the adapter files.

The choice of a version: the weights are laid out on ``[0, 1)`` in the order the split lists them, and a request
takes the version whose range holds its point. A request that carries ``X-Session-ID`` has the point
``blake2b(task, key)`` (the key is hashed, never stored), so one caller keeps its version while the split is
unchanged (and keeps it when only the last version's weight grows: its range only widens downwards); without a
key the point is random. A request that names its version (``task@version``, ``/v2``'s versioned paths) is never
split. The point is drawn once per task and request (:class:`Caller`): a request is answered by one version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptformer_server.repository.files import atomic_write, fsync_dir
from adaptformer_server.repository.names import valid_task_name, valid_version

__all__ = [
    "MAX_SPLIT_VERSIONS",
    "SESSION_HEADER",
    "SPLITS",
    "WEIGHT_TOLERANCE",
    "Caller",
    "Split",
    "SplitStore",
    "check_split",
    "current_caller",
    "enter_caller",
    "leave_caller",
    "session_point",
]

log = logging.getLogger("adaptformer_server.store")

SPLITS = ".splits"  # .splits/<task>.json: the split of one task
SESSION_HEADER = "X-Session-ID"
MAX_SPLIT_VERSIONS = 4
WEIGHT_TOLERANCE = 1e-6
_FORMAT = 1


@dataclass(frozen=True)
class Split:
    """The versions a task's unpinned requests are shared between, with their weights (summing to 1)."""

    task: str
    weights: tuple[tuple[str, float], ...]

    @property
    def versions(self) -> list[str]:
        return [v for v, _ in self.weights]

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)

    def choose(self, point: float) -> str:
        """The version whose range of ``[0, 1)`` holds ``point``."""
        edge = 0.0
        for version, weight in self.weights:
            edge += weight
            if point < edge:
                return version
        return self.weights[-1][0]  # rounding: the sum may fall a hair short of 1

    def to_json(self) -> bytes:
        return json.dumps({"format": _FORMAT, "task": self.task, "versions": self.as_dict()}).encode()

    @classmethod
    def from_json(cls, task: str, data: bytes) -> Split:
        """Reads a split file (the checks of :func:`check_split`). Raises ``ValueError``."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("task") != task:
            raise ValueError("not a split file of this format and task")
        return check_split(task, doc.get("versions"))


def check_split(task: str, versions: Any) -> Split:
    """A split from ``{version: weight}``: 1 to :data:`MAX_SPLIT_VERSIONS` distinct versions (12 hex digits),
    weights finite and > 0, summing to 1 within :data:`WEIGHT_TOLERANCE` (not normalised: a sum of 1.1 is a
    mistake to report, not to guess at).

    Raises:
        ValueError: the message says what to change.
    """
    example = '{"versions": {"3f2a9c1b7d4e": 0.9, "9c1b7d4e3f2a": 0.1}}'
    if not isinstance(versions, Mapping) or not versions:
        raise ValueError(f"give the versions and their weights, e.g. {example}")
    if len(versions) > MAX_SPLIT_VERSIONS:
        raise ValueError(f"a split has at most {MAX_SPLIT_VERSIONS} versions; {len(versions)} were given")
    weights: list[tuple[str, float]] = []
    for version, weight in versions.items():
        if not isinstance(version, str) or not valid_version(version):
            raise ValueError(
                f"{str(version)[:40]!r} is not a version (12 hex digits, as GET /adapters/{task}/versions lists)"
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"the weight of version {version} must be a number > 0, not {weight!r}")
        weights.append((version, float(weight)))
    total = sum(w for _, w in weights)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"the weights must sum to 1 (within {WEIGHT_TOLERANCE:g}); they sum to {total:.9g}")
    return Split(task, tuple(weights))


def session_point(task: str, key: str) -> float:
    """A caller's point in ``[0, 1)`` for ``task``: the same task and key always give the same point."""
    digest = hashlib.blake2b(f"{task}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class Caller:
    """The request being admitted, as a split sees it: its session key (``None``: none given), whether it named
    its version, and the version chosen for each split task so far (chosen once per request)."""

    key: str | None = None
    named_version: bool = False
    chosen: dict[str, str] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)  # task -> the version admitted (the metrics' label)

    def pick(self, split: Split) -> str:
        version = self.chosen.get(split.task)
        if version is None or version not in split.versions:
            point = session_point(split.task, self.key) if self.key else random.random()
            version = self.chosen[split.task] = split.choose(point)
        return version


_caller: ContextVar[Caller | None] = ContextVar("adaptformer_split_caller", default=None)


def enter_caller(key: str | None, named_version: bool = False) -> Token[Caller | None]:
    """Makes this task's prediction request a split's caller until :func:`leave_caller` (the token)."""
    return _caller.set(Caller(key=key or None, named_version=named_version))


def leave_caller(token: Token[Caller | None]) -> None:
    _caller.reset(token)


def current_caller() -> Caller | None:
    """The prediction request being handled (``None`` outside one: no split applies)."""
    return _caller.get()


class SplitStore:
    """The split files of a store (``.splits/<task>.json``).

    Args:
        root: The store directory.
    """

    def __init__(self, root: Path) -> None:
        self.folder = Path(root) / SPLITS
        self._stamps: dict[str, tuple[int, int, int]] | None = None

    def path(self, task: str) -> Path:
        if not valid_task_name(task):
            raise ValueError(f"invalid task name {task!r}")
        return self.folder / f"{task}.json"

    def write(self, split: Split) -> None:
        self.folder.mkdir(exist_ok=True)
        atomic_write(self.path(split.task), split.to_json())

    def clear(self, task: str) -> bool:
        """Removes ``task``'s split; True when there was one."""
        try:
            self.path(task).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.folder)
        return True

    def _listing(self) -> dict[str, tuple[int, int, int]]:
        found = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as it:
            for e in it:
                task = e.name.removesuffix(".json")
                if e.name.startswith(".") or not e.name.endswith(".json") or not valid_task_name(task):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = e.stat()
                    found[task] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return found

    def poll(self) -> dict[str, Split] | None:
        """Every split, when a file changed since the last poll (one listing, a stat each); ``None`` when none did.

        A file that cannot be read is left out with a warning (it splits nothing).
        """
        now = self._listing()
        if now == self._stamps:
            return None
        self._stamps = now
        splits = {}
        for task in now:
            try:
                splits[task] = Split.from_json(task, self.path(task).read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                log.warning("ignoring the split of %s (%s): %s", task, SPLITS, e)
        return splits
