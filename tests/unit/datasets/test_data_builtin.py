"""The data set layer's built-in sources (digits, Fashion-MNIST, emoji, motion clips) and their determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.data import BUILTIN_SOURCES, MOTION_LABELS, LabeledData, Splits, motion_clip
from adaptformer.data import emoji as emoji_mod
from adaptformer.preprocess import InputSpec, preprocess_image
from tests.unit.datasets.trees import SPEC, load, needs_emoji, needs_fashion_mnist

# ---------------------------------------------------------------------------------------------- built-ins


def test_builtin_sources_are_described():
    assert set(BUILTIN_SOURCES) == {
        "fashion-mnist",
        "fashion-tint",
        "fashion-turned",
        "digits",
        "emoji",
        "motion",
        "zoom-rotate",
    }
    assert all(isinstance(v, str) and v for v in BUILTIN_SOURCES.values())


def _check(splits: Splits, n_classes: int, modality: str, frames: int, limit: int) -> None:
    assert isinstance(splits.train, LabeledData)
    assert len(splits.labels) == n_classes == splits.num_classes
    assert (splits.modality, splits.frames) == (modality, frames)
    assert splits.source
    for part in (splits.train, splits.val):
        shape = (3, SPEC.size, SPEC.size) if modality == "image" else (frames, 3, SPEC.size, SPEC.size)
        assert part.x.shape[1:] == shape
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert part.y.shape == (part.x.shape[0],) and 0 < len(part) <= limit
        assert int(part.y.min()) >= 0 and int(part.y.max()) < n_classes
        assert torch.isfinite(part.x).all() and float(part.x.min()) >= -1.0 - 1e-6 and float(part.x.max()) <= 1 + 1e-6


def test_digits():
    s = load("digits", limit=40)
    _check(s, 10, "image", 1, 40)
    assert s.labels == [str(d) for d in range(10)]
    assert torch.bincount(s.train.y, minlength=10).tolist() == [4] * 10  # limit is class-balanced


def test_digits_full_split_is_disjoint_and_stratified():
    s = load("digits", spec=InputSpec(size=8, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert len(s.train) + len(s.val) == 1797
    assert abs(len(s.val) / 1797 - 0.2) < 0.01
    # Digits are 8x8, so at size 8 every sample is an exact copy: no image sits in both splits.
    train = {tuple(x.flatten().tolist()) for x in s.train.x[:, 0]}
    overlap = sum(tuple(x.flatten().tolist()) in train for x in s.val.x[:, 0])
    assert overlap < 5  # (a few digits in the data set are pixel-identical duplicates)


def test_digits_same_pixels_as_preprocess_image():
    from sklearn.datasets import load_digits

    s = load("digits", limit=3)
    d = load_digits()
    raw = np.clip(np.round(d.images * 255 / 16), 0, 255).astype(np.uint8)
    matches = [any(torch.equal(preprocess_image(im, SPEC), x) for im in raw[d.target == int(y)]) for x, y in
               zip(s.train.x, s.train.y, strict=True)]  # fmt: skip
    assert all(matches)


@needs_fashion_mnist
def test_fashion_mnist():
    s = load("fashion-mnist", limit=30)
    _check(s, 10, "image", 1, 30)
    assert s.labels[0] == "t-shirt/top" and s.labels[-1] == "ankle boot"
    assert len(s.train) == len(s.val) == 30
    assert torch.bincount(s.val.y, minlength=10).tolist() == [3] * 10


@needs_emoji
def test_emoji(small_emoji):
    s = load("emoji", limit=1000)
    _check(s, 9, "image", 1, 1000)
    assert "Component" not in s.labels
    assert s.labels[:2] == ["Smileys & Emotion", "People & Body"] and "Flags" in s.labels
    # 6 emoji per group: 5 train and 1 val emoji, 4 augmented copies each.
    assert torch.bincount(s.train.y).tolist() == [20] * 9
    assert torch.bincount(s.val.y).tolist() == [4] * 9
    # A cache file was written, and a second load (from memory or disk) is identical.
    assert list((small_emoji.parent / "cache").glob("emoji-glyphs-*.npz"))
    emoji_mod._MEMORY.clear()
    again = load("emoji", limit=1000)
    assert torch.equal(again.train.x, s.train.x) and torch.equal(again.val.y, s.val.y)


@needs_emoji
def test_emoji_val_emoji_are_unseen(small_emoji, monkeypatch):
    _, emojis, glyphs = emoji_mod.emoji_glyphs(SPEC.size, progress=False)
    assert len(emojis) == 54 and glyphs.shape == (54, 16, 16, 4) and glyphs.dtype == np.uint8
    s = load("emoji", seed=3)
    assert not torch.equal(s.train.x[0], s.train.x[1])  # augmented copies differ
    # Without augmentation the copies of one emoji are identical: no val picture is found in train.
    monkeypatch.setattr(emoji_mod, "_augment", lambda glyph, size, rng: Image.fromarray(glyph).convert("RGB"))
    plain = load("emoji", seed=3)
    train = {x.numpy().tobytes() for x in plain.train.x}
    assert len(train) == len(plain.train) // emoji_mod.EMOJI_COPIES
    assert not any(x.numpy().tobytes() in train for x in plain.val.x)


@needs_emoji
def test_emoji_table_real_file():
    table = emoji_mod.emoji_table()
    groups = {g for g, _ in table}
    assert "Component" not in groups and len(groups) == 9
    assert ("Smileys & Emotion", "\U0001f600") in table
    assert not any(0x1F3FB <= ord(ch) <= 0x1F3FF for _, e in table for ch in e)  # no skin tones


def test_motion_shapes_and_frames():
    for frames in (2, 4):
        s = load("motion", frames=frames, limit=16)
        _check(s, 8, "clip", frames, 16)
        assert s.labels == MOTION_LABELS
    s = load("motion", limit=8)
    assert s.frames == 8 and s.train.x.shape == (8, 8, 3, 16, 16)
    assert torch.bincount(s.train.y, minlength=8).tolist() == [1] * 8


def test_motion_first_frame_does_not_depend_on_the_label():
    photos = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    for seed in range(5):
        clips = [motion_clip(photos, label, 4, np.random.default_rng(seed)) for label in range(8)]
        # Same random state, any label: the same first frame; later frames differ.
        assert all(np.array_equal(c[0], clips[0][0]) for c in clips)
        assert len({c[-1].tobytes() for c in clips}) == 8


def test_motion_label_needs_the_frame_order():
    from sklearn.linear_model import LogisticRegression

    spec = InputSpec(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)  # 32 = the window: frames are not resampled
    s = load("motion", spec=spec, frames=2, limit=400)

    # A single frame, whichever, says nothing about the label: a classifier on it stays at chance.
    def pooled(x):
        return torch.nn.functional.avg_pool2d(x, 8).flatten(1).numpy()

    for t in (0, 1):
        clf = LogisticRegression(max_iter=200).fit(pooled(s.train.x[:, t]), s.train.y.numpy())
        acc = clf.score(pooled(s.val.x[:, t]), s.val.y.numpy())
        assert acc < 0.25, f"frame {t} alone predicts the motion ({acc:.2f}; chance is 0.125)"

    # Two frames in order do: the best-matching shift between them gives the direction.
    directions = {(1, 0): 0, (-1, 0): 1, (0, 1): 2, (0, -1): 3, (1, 1): 4, (-1, 1): 5, (1, -1): 6, (-1, -1): 7}

    def direction(clip):
        a, b = clip[0].numpy(), clip[1].numpy()
        best = None
        for dx in range(-4, 5):
            for dy in range(-4, 5):
                err = np.mean((b[:, 8:24, 8:24] - a[:, 8 - dy : 24 - dy, 8 - dx : 24 - dx]) ** 2)
                if best is None or err < best[0]:
                    best = (err, dx, dy)
        return directions.get((int(np.sign(best[1])), int(np.sign(best[2]))), -1)

    predicted = np.array([direction(c) for c in s.val.x[:100]])
    assert (predicted == s.val.y[:100].numpy()).mean() > 0.9


def test_motion_train_and_val_differ():
    s = load("motion", frames=2, limit=8)
    assert not any(torch.equal(a, b) for a in s.train.x for b in s.val.x)


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("source", ["digits", "motion"])
def test_deterministic_for_a_seed(source):
    kw = dict(limit=12, frames=2 if source == "motion" else None)
    a, b, c = load(source, seed=7, **kw), load(source, seed=7, **kw), load(source, seed=8, **kw)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)


@needs_emoji
def test_emoji_deterministic(small_emoji):
    a, b, c = load("emoji", seed=1, limit=20), load("emoji", seed=1, limit=20), load("emoji", seed=2, limit=20)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.x, b.val.x)
    assert not torch.equal(a.train.x, c.train.x)


def test_folder_deterministic(image_tree):
    a, b = load(image_tree, seed=1), load(image_tree, seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
