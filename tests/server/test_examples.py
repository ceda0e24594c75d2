"""examples/: the README's sample inputs exist, cover every demo class, and answer right on the demo tasks."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence
from safetensors import safe_open

from adaptformer_server.app import create_app
from adaptformer_server.settings import Settings
from tests.support import serving

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MANIFEST = json.loads((EXAMPLES / "manifest.json").read_text())


def _readme_predict_commands() -> list[tuple[str, list[str]]]:
    """(task, [example files]) of every `curl ... examples/...` line of the README."""
    out = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("curl") or "examples/" not in line:
            continue
        words = shlex.split(line, comments=True)
        url = next(w for w in words if "/predict?" in w)
        task = re.search(r"task=([\w-]+)", url).group(1)
        files = [w.split("@", 1)[1] for w in words if w.startswith("image=@")]
        out.append((task, files))
    return out


def test_readme_names_only_files_that_exist():
    commands = _readme_predict_commands()
    assert {task for task, _ in commands} >= {"fashion", "digits", "motion"}
    for _, files in commands:
        for f in files:
            assert (ROOT / f).is_file(), f


def test_manifest_covers_every_class_of_every_demo_task():
    demo = ROOT / "adapters" / "adaptformer" / "demo"
    for path in sorted(demo.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            labels = json.loads(f.metadata()["labels"])
        ours = {e["label"] for e in MANIFEST if e["task"] == path.stem}
        assert ours == set(labels), path.stem
    for e in MANIFEST:
        assert (EXAMPLES / e["file"]).is_file()


async def test_readme_examples_answer_with_their_true_label(tmp_path):
    truth = {e["file"]: e["label"] for e in MANIFEST}
    settings = Settings(store=tmp_path / "store", max_wait_ms=1)
    async with serving(create_app(settings)) as client:
        for task, files in _readme_predict_commands():
            parts = [("image", (Path(f).name, (ROOT / f).read_bytes())) for f in files]
            r = await client.post(f"/predict?task={task}&top_k=1", files=parts)
            assert r.status_code == 200, r.text
            got = [p[0]["label"] for p in r.json()["predictions"]]
            assert got == [truth[Path(f).name] for f in files], (task, files, r.json())


def _pixels(path: Path) -> list[np.ndarray]:
    with Image.open(path) as img:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)]


def test_script_rewrites_the_committed_examples(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.fail("the Fashion-MNIST files are missing: make system-deps installs them")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_examples.py"), "--out", str(tmp_path)], check=True)
    assert json.loads((tmp_path / "manifest.json").read_text()) == MANIFEST
    for e in MANIFEST:
        new, old = _pixels(tmp_path / e["file"]), _pixels(EXAMPLES / e["file"])
        assert len(new) == len(old) and all(np.array_equal(a, b) for a, b in zip(new, old, strict=True)), e["file"]
