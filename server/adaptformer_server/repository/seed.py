"""The demo adapters shipped in the ``adaptformer`` package, copied once into a new store."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

from adaptformer.adapter_header import read_header
from adaptformer.errors import AdapterFormatError
from adaptformer_server.repository.files import atomic_write
from adaptformer_server.repository.layout import AdapterStore
from adaptformer_server.repository.names import SUFFIX, valid_task_name

__all__ = ["SEEDED", "demo_files", "seed", "seeded_fingerprints"]

log = logging.getLogger("adaptformer_server.store")

SEEDED = ".seeded"


def demo_files() -> list[Path]:
    """The demo adapter files shipped in the ``adaptformer`` package (may be none)."""
    folder = Path(str(resources.files("adaptformer") / "demo"))
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.is_file()) if folder.is_dir() else []


def seeded_fingerprints(store: AdapterStore) -> set[str] | None:
    """Fingerprints the store was seeded for; ``None`` when never seeded."""
    marker = store.root / SEEDED
    if not marker.exists():
        return None
    try:
        data = json.loads(marker.read_text() or "{}")
        return set(data.get("fingerprints", [])) if isinstance(data, dict) else set()
    except (OSError, ValueError):
        return set()


def seed(store: AdapterStore, fingerprint: str, sources: list[Path]) -> list[str]:
    """Copies the demo files trained on ``fingerprint`` once, then records it in the ``.seeded`` marker.

    A demo task deleted later stays deleted: the marker says this backbone was seeded already. Files of
    other backbones are left out; with none that fits, no marker is written (a later backbone may fit).
    """
    done = seeded_fingerprints(store)
    if done is not None and (fingerprint in done or not done):
        return []
    copied: list[str] = []
    matched = False
    for src in sources:
        task = src.name[: -len(SUFFIX)]
        try:
            meta = read_header(src, src.name).metadata
        except (OSError, AdapterFormatError) as e:
            log.warning("demo adapter %s is unreadable: %s", src.name, e)
            continue
        if meta.backbone_fingerprint != fingerprint or not valid_task_name(task):
            continue
        matched = True
        dst = store.root / src.name
        if dst.exists():
            log.info("demo adapter %s not copied: the store already has a task of that name", task)
            continue
        atomic_write(dst, src.read_bytes())
        copied.append(task)
    if matched:
        record = sorted((done or set()) | {fingerprint})
        atomic_write(store.root / SEEDED, json.dumps({"fingerprints": record}).encode())
        log.info("seeded demo adapters: %s", ", ".join(copied) or "none new")
    return copied
