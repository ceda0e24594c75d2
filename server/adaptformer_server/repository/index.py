"""The store's one index on disk: ``.index.json``, the checked header and the version of every current file,
by file stamp (size, mtime, inode), so that a restart with thousands of unchanged adapters lists and stats them and
opens none.

Its format names the code that checked the headers (:func:`index_format`): a server with other checks reads every
file again rather than trust another's records. Writing it is atomic; a lost or unreadable index only costs one
full read of the store.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from adaptformer import adapter_header, fit, input_spec, metadata, safetensors_header
from adaptformer import config as adapter_config
from adaptformer_server.repository.files import atomic_write
from adaptformer_server.repository.record import Stamp

__all__ = ["INDEX", "StoreIndex", "index_format"]

log = logging.getLogger("adaptformer_server.store")

INDEX = ".index.json"
_OLD_CACHES = (".headers.json", ".versions.json")  # what earlier servers wrote instead: removed when rewritten


@functools.cache
def index_format() -> str:
    """Names the header checks: the record format, the adapter format version and a digest of the modules that
    check headers."""
    digest = hashlib.sha256()
    # the header checks live in these
    for module in (adapter_header, safetensors_header, metadata, fit, adapter_config, input_spec):
        digest.update(Path(module.__file__ or "").read_bytes())
    return f"2/{metadata.FORMAT_VERSION}/{digest.hexdigest()[:12]}"


class StoreIndex:
    """The records of ``.index.json``: file name -> ``{size, mtime_ns, ino, version, header}``.

    Args:
        root: The store directory.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / INDEX

    def load(self) -> dict[str, dict[str, Any]]:
        """The records (empty when absent, unreadable, or written by other checks)."""
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != index_format()
            or not isinstance(data.get("files"), dict)
        ):
            return {}
        return data["files"]

    def save(self, records: dict[str, dict[str, Any]]) -> None:
        doc = {"format": index_format(), "files": records}
        try:
            atomic_write(self.path, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        except OSError as e:
            log.warning("cannot write the index %s: %s", self.path.name, e)
            return
        for name in _OLD_CACHES:
            (self.path.parent / name).unlink(missing_ok=True)

    def version(self, name: str, stamp: Stamp) -> str | None:
        """The version recorded for file ``name`` when its record is for exactly ``stamp``."""
        record = self.load().get(name)
        version = record.get("version") if stamp.matches(record) else None  # type: ignore[union-attr]
        return version if isinstance(version, str) else None
