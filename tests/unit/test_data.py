"""The data set layer: built-in sources, folders of images and clips, determinism, user errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.data import BUILTIN_SOURCES, MOTION_LABELS, LabeledData, Splits, load_data, motion_clip
from adaptformer.data import _util as data_util
from adaptformer.data import emoji as emoji_mod
from adaptformer.data import fashion_mnist as fmnist_mod
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec, preprocess_image

SPEC = InputSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

needs_fashion_mnist = pytest.mark.skipif(
    not (fmnist_mod.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST files absent (sudo apt-get install dataset-fashion-mnist)",
)
needs_emoji = pytest.mark.skipif(
    not (emoji_mod.EMOJI_FONT.is_file() and emoji_mod.EMOJI_TEST.is_file()),
    reason="emoji font or emoji-test.txt absent (sudo apt-get install fonts-noto-color-emoji unicode-data)",
)


def load(source, **kw) -> Splits:
    kw.setdefault("progress", False)
    return load_data(str(source), kw.pop("spec", SPEC), **kw)


# ---------------------------------------------------------------------------------------------- fixtures


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


def _png(path: Path, colour, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _gif(path: Path, colours, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("RGB", size, c) for c in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


@pytest.fixture
def image_tree(tmp_path) -> Path:
    root = tmp_path / "images"
    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(5):
            _png(root / c / f"{i}.png", colour, size=(8 + i, 6 + 2 * i))
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()  # ignored
    return root


def _value(frame_colour: int) -> tuple[int, int, int]:
    return (frame_colour * 20, 0, 0)


@pytest.fixture
def clip_tree(tmp_path) -> Path:
    """Two classes; GIF clips and folders of frames, 4 frames each; frame k has red = 20 * k."""
    root = tmp_path / "clips"
    for c in ("left", "right"):
        for i in range(3):
            _gif(root / c / f"g{i}.gif", [_value(k) for k in range(4)], size=(10, 8 + i))
        frame_dir = root / c / "dir0"
        for k in range(4):  # names sort naturally: f2 before f10
            _png(frame_dir / f"f{[1, 2, 10, 11][k]}.png", _value(k), size=(8 + k, 8))
    return root


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


# ---------------------------------------------------------------------------------------------- folders


def test_image_folder(image_tree):
    s = load(image_tree)
    assert s.labels == ["cat", "dog"] and (s.modality, s.frames) == ("image", 1)
    assert len(s.train) == 8 and len(s.val) == 2
    assert torch.bincount(s.val.y).tolist() == [1, 1]
    assert s.train.x.shape == (8, 3, 16, 16)
    red = preprocess_image(Image.new("RGB", (8, 8), (255, 0, 0)), SPEC)
    for x, y in zip(s.train.x, s.train.y, strict=True):
        assert torch.allclose(x, red) == (y == 0)
    assert len(load(image_tree, limit=1).train) == 1


def test_train_val_folders(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for c in ("a", "b"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.jpg", (10, 20, 30))
    s = load(tmp_path)
    assert (len(s.train), len(s.val), s.labels) == (6, 2, ["a", "b"])
    assert "train/ and val/" in s.source


def test_clip_folder(clip_tree):
    s = load(clip_tree)
    assert (s.modality, s.frames, s.labels) == ("clip", 4, ["left", "right"])
    assert len(s.train) + len(s.val) == 8 and s.train.x.shape[1:] == (4, 3, 16, 16)
    # Frames keep their order (natural sort for folders of frames): red channel rises with k.
    for clip in torch.cat([s.train.x, s.val.x]):
        reds = [float(clip[k, 0].mean()) for k in range(4)]
        expected = [float(preprocess_image(Image.new("RGB", (8, 8), _value(k)), SPEC)[0].mean()) for k in range(4)]
        assert np.allclose(reds, expected, atol=1e-3)


def test_clip_folder_resamples_to_frames(clip_tree):
    s = load(clip_tree, frames=2)
    assert s.frames == 2 and s.train.x.shape[1] == 2
    first, last = (float(preprocess_image(Image.new("RGB", (8, 8), _value(k)), SPEC)[0].mean()) for k in (0, 3))
    assert np.allclose(s.train.x[:, 0, 0].mean((1, 2)), first, atol=1e-3)  # evenly spaced: frames 0 and 3
    assert np.allclose(s.train.x[:, 1, 0].mean((1, 2)), last, atol=1e-3)
    assert load(clip_tree, frames=6).train.x.shape[1] == 6  # shorter clips repeat frames


# ---------------------------------------------------------------------------------------------- user errors


def _raises(match: str, source, **kw) -> str:
    with pytest.raises(DataError, match=match) as e:
        load(source, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_unknown_source_lists_builtins():
    msg = _raises("unknown data source 'mnist'", "mnist")
    assert all(name in msg for name in BUILTIN_SOURCES)


def test_path_not_found(tmp_path):
    _raises("data path not found", tmp_path / "nope")


def test_empty_folder(tmp_path):
    _raises("is empty", tmp_path)


def test_images_without_class_folders(tmp_path):
    _png(tmp_path / "a.png", (1, 2, 3))
    _raises("no class folders", tmp_path)


def test_only_one_class(tmp_path):
    _png(tmp_path / "cat" / "a.png", (1, 2, 3))
    _raises(r"only one class \(cat\)", tmp_path)


def test_empty_class_folder(image_tree):
    (image_tree / "emu").mkdir()
    _raises("class folder .*emu holds no images", image_tree)


def test_unreadable_image_names_the_file(image_tree):
    (image_tree / "dog" / "broken.png").write_bytes(b"this is not a png")
    _raises("broken.png", image_tree)


def test_truncated_image_names_the_file(image_tree):
    path = image_tree / "dog" / "cut.png"
    _png(path, (1, 2, 3), size=(64, 64))
    path.write_bytes(path.read_bytes()[:60])
    _raises("cut.png", image_tree, limit=100)


def test_mixed_images_and_clips(image_tree):
    _gif(image_tree / "dog" / "moving.gif", [(0, 0, 0), (255, 255, 255)])
    _raises("mixes images and clips", image_tree)


def test_clips_of_different_lengths(clip_tree):
    _gif(clip_tree / "left" / "long.gif", [_value(k) for k in range(7)])
    msg = _raises("different frame counts", clip_tree)
    assert "frames=" in msg
    assert load(clip_tree, frames=4).frames == 4


def test_empty_clip_folder(clip_tree):
    (clip_tree / "left" / "dir1").mkdir()
    _raises("clip folder .*dir1 holds no frame images", clip_tree)


def test_val_class_unknown_to_train(tmp_path):
    for split, classes in (("train", ("a", "b")), ("val", ("a", "c"))):
        for c in classes:
            _png(tmp_path / split / c / "0.png", (1, 2, 3))
    _raises("classes that the training split lacks: c", tmp_path)


def test_frames_on_image_sources(image_tree):
    _raises("frames=4 applies to clip data only", "digits", frames=4)
    _raises("frames=2 applies to clip data only", image_tree, frames=2)
    assert load("digits", frames=1, limit=10).frames == 1


def test_motion_needs_two_frames():
    _raises("at least 2 frames", "motion", frames=1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(val_fraction=0.0), "val_fraction"),
        (dict(val_fraction=1.5), "val_fraction"),
        (dict(limit=0), "limit must be a positive integer"),
        (dict(frames=0), "frames must be a positive integer"),
    ],
)
def test_bad_arguments(kw, match):
    _raises(match, "digits", **kw)


def test_missing_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    msg = _raises("scikit-learn", "digits")
    assert "pip install scikit-learn" in msg and "adaptformer-serve[data]" in msg


def test_missing_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist_mod, "FASHION_MNIST_DIR", tmp_path)
    _raises("apt-get install dataset-fashion-mnist", "fashion-mnist")


def test_missing_emoji_files(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji_mod, "EMOJI_FONT", tmp_path / "NotoColorEmoji.ttf")
    _raises("sudo apt-get install fonts-noto-color-emoji unicode-data", "emoji")


def test_too_large_for_memory():
    with pytest.raises(DataError, match="pass a smaller limit"):
        data_util.check_memory("fashion-mnist", 70_000, 1, 4096)


# ---------------------------------------------------------------------------------------------- progress


def test_progress_bar(monkeypatch, capsys):
    monkeypatch.setattr(data_util, "PROGRESS_DELAY_S", 0.0)
    load("digits", limit=10, progress=False)
    assert "digits train" not in capsys.readouterr().err
    load("digits", limit=10, progress=True)
    assert "digits train" in capsys.readouterr().err


def test_clip_spec_gives_the_default_frames(clip_tree):
    spec = SPEC.as_clip(frames=2, tubelet=2)
    assert load("motion", spec=spec, limit=4).frames == 2
    assert load(clip_tree, spec=spec).train.x.shape[1] == 2
    assert load("digits", spec=spec, limit=4).modality == "image"  # image sources ignore it


def test_motion_without_fashion_mnist_uses_digits(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist_mod, "FASHION_MNIST_DIR", tmp_path)
    s = load("motion", frames=2, limit=8)
    assert "digits" in s.source and s.train.x.shape == (8, 2, 3, 16, 16)
