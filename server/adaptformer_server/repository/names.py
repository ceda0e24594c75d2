"""What a task name and a version may be: the rules the store, the routes and the services share."""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "SUFFIX",
    "TASK_PATTERN",
    "VERSION_PATTERN",
    "split_pin",
    "task_name_problem",
    "valid_task_name",
    "valid_version",
    "version_of",
]

SUFFIX = ".safetensors"
TASK_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TASK_RE = re.compile(TASK_PATTERN)
VERSION_PATTERN = r"^[0-9a-f]{12}$"
_VERSION_RE = re.compile(VERSION_PATTERN)


def valid_task_name(name: str) -> bool:
    """Task names are file names in the store: a safe pattern and never ``..``."""
    return bool(_TASK_RE.fullmatch(name)) and ".." not in name


def task_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a task (the one message every check gives), or ``None`` when it can."""
    if valid_task_name(name):
        return None
    return f"invalid task name {name[:80]!r}: names match {TASK_PATTERN} and never contain '..'"


def valid_version(version: str) -> bool:
    """Versions are the first 12 hex digits (lower case) of the SHA-256 of a file's bytes."""
    return bool(_VERSION_RE.fullmatch(version))


def version_of(data: bytes) -> str:
    """The version of an adapter file: the first 12 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


def split_pin(name: str) -> tuple[str, str | None]:
    """``task@version`` -> (task, version); a plain task name -> (task, None)."""
    task, sep, version = name.partition("@")
    return (task, version) if sep else (name, None)
