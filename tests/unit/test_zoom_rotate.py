"""The zoom-rotate clips: a second clip data set, whose label is a change across frames but not a shift."""

from __future__ import annotations

import numpy as np
import torch

from adaptformer.data import load_data
from adaptformer.data.zoom_rotate import ZOOM_ROTATE_LABELS, zoom_rotate_clip
from adaptformer.preprocess import InputSpec

SPEC = InputSpec(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_shapes_labels_and_balance() -> None:
    s = load_data("zoom-rotate", SPEC, frames=4, limit=16, progress=False)
    assert s.labels == ZOOM_ROTATE_LABELS and s.modality == "clip" and s.frames == 4
    assert s.train.x.shape == (16, 4, 3, 16, 16) and len(s.val.y) == 16
    assert torch.bincount(s.train.y, minlength=4).tolist() == [4] * 4
    assert not any(torch.equal(a, b) for a in s.train.x for b in s.val.x)


def test_seeded_and_frames_change() -> None:
    a = load_data("zoom-rotate", SPEC, frames=2, limit=8, seed=3, progress=False)
    b = load_data("zoom-rotate", SPEC, frames=2, limit=8, seed=3, progress=False)
    assert torch.equal(a.train.x, b.train.x)
    assert all((clip[0] - clip[1]).abs().mean() > 0.01 for clip in a.train.x)


class _Middle:
    """Stands in for the random generator: every uniform draw is the middle of its range."""

    def uniform(self, low: float, high: float) -> float:
        return (low + high) / 2


def _dot_clip(monkeypatch, label: str) -> list[np.ndarray]:
    from PIL import Image

    from adaptformer.data import zoom_rotate

    canvas = np.zeros((252, 252, 3), dtype=np.uint8)
    canvas[124:129, 134:139] = 255  # a dot 10 px right of the canvas centre, where the window looks
    monkeypatch.setattr(zoom_rotate, "_canvas", lambda photos, rng: Image.fromarray(canvas))
    return zoom_rotate_clip(np.zeros((1, 28, 28), np.uint8), ZOOM_ROTATE_LABELS.index(label), 2, _Middle())


def _polar(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(frame.mean(-1) > 64)
    x, y = xs.mean() + 0.5 - frame.shape[1] / 2, ys.mean() + 0.5 - frame.shape[0] / 2
    return float(np.arctan2(y, x)), float(np.hypot(x, y))


def test_turn_left_is_counter_clockwise_and_zoom_in_grows(monkeypatch) -> None:
    """Follow one dot: its angle about the window centre (y down: counter-clockwise lowers it) and distance."""
    (a0, _), (a1, _) = map(_polar, _dot_clip(monkeypatch, "turn-left"))
    assert 0.05 < (a0 - a1) % (2 * np.pi) < 1.0
    (a0, _), (a1, _) = map(_polar, _dot_clip(monkeypatch, "turn-right"))
    assert 0.05 < (a1 - a0) % (2 * np.pi) < 1.0
    (_, r0), (_, r1) = map(_polar, _dot_clip(monkeypatch, "zoom-in"))
    assert r1 > r0 * 1.03
    (_, r0), (_, r1) = map(_polar, _dot_clip(monkeypatch, "zoom-out"))
    assert r1 < r0 / 1.03


def test_opposite_classes_are_the_same_clip_played_backwards() -> None:
    """The same draws give turn-right = turn-left reversed, zoom-out = zoom-in reversed: only order tells them apart."""
    photos = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    for a, b in (("turn-left", "turn-right"), ("zoom-in", "zoom-out")):
        for seed in range(3):
            fwd = zoom_rotate_clip(photos, ZOOM_ROTATE_LABELS.index(a), 4, np.random.default_rng(seed))
            back = zoom_rotate_clip(photos, ZOOM_ROTATE_LABELS.index(b), 4, np.random.default_rng(seed))
            assert all(np.array_equal(f, g) for f, g in zip(fwd, back[::-1], strict=True))
