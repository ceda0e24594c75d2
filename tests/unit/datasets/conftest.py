"""Fixtures of the data-set tests: the emoji source cut down, a tree of images, a tree of clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptformer.data import emoji as emoji_mod
from tests.unit.datasets.trees import frame_value, write_gif, write_png


@pytest.fixture
def small_emoji(tmp_path, monkeypatch):
    """The real font and the real emoji-test.txt cut down to 6 emoji per group; the cache under tmp_path."""
    lines, per_group, group = [], {}, None
    for line in emoji_mod.EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            lines.append(line)
        elif (
            "; fully-qualified" in line
            and per_group.get(group, 0) < 6
            and not any(tone in line.split(";")[0] for tone in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"))
        ):
            per_group[group] = per_group.get(group, 0) + 1
            lines.append(line)
        elif "; unqualified" in line and per_group.get(group, 0) < 6:
            lines.append(line)  # must be dropped
    test_file = tmp_path / "emoji-test.txt"
    test_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(emoji_mod, "EMOJI_TEST", test_file)
    monkeypatch.setenv("ADAPTFORMER_CACHE_DIR", str(tmp_path / "cache"))
    return test_file


@pytest.fixture
def image_tree(tmp_path) -> Path:
    root = tmp_path / "images"
    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(5):
            write_png(root / c / f"{i}.png", colour, size=(8 + i, 6 + 2 * i))
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()  # ignored
    return root


@pytest.fixture
def clip_tree(tmp_path) -> Path:
    """Two classes; GIF clips and folders of frames, 4 frames each; frame k has red = 20 * k."""
    root = tmp_path / "clips"
    for c in ("left", "right"):
        for i in range(3):
            write_gif(root / c / f"g{i}.gif", [frame_value(k) for k in range(4)], size=(10, 8 + i))
        frame_dir = root / c / "dir0"
        for k in range(4):  # names sort naturally: f2 before f10
            write_png(frame_dir / f"f{[1, 2, 10, 11][k]}.png", frame_value(k), size=(8 + k, 8))
    return root
