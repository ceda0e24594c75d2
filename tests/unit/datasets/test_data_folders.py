"""The data set layer's folders of images and clips, the user errors it names, and its progress bar."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.data import BUILTIN_SOURCES
from adaptformer.data import _util as data_util
from adaptformer.data import emoji as emoji_mod
from adaptformer.data import fashion_mnist as fmnist_mod
from adaptformer.errors import DataError
from adaptformer.preprocess import preprocess_image
from tests.unit.datasets.trees import SPEC, frame_value, load, write_gif, write_png

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
                write_png(tmp_path / split / c / f"{i}.jpg", (10, 20, 30))
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
        expected = [float(preprocess_image(Image.new("RGB", (8, 8), frame_value(k)), SPEC)[0].mean()) for k in range(4)]
        assert np.allclose(reds, expected, atol=1e-3)


def test_clip_folder_resamples_to_frames(clip_tree):
    s = load(clip_tree, frames=2)
    assert s.frames == 2 and s.train.x.shape[1] == 2
    first, last = (float(preprocess_image(Image.new("RGB", (8, 8), frame_value(k)), SPEC)[0].mean()) for k in (0, 3))
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
    write_png(tmp_path / "a.png", (1, 2, 3))
    _raises("no class folders", tmp_path)


def test_only_one_class(tmp_path):
    write_png(tmp_path / "cat" / "a.png", (1, 2, 3))
    _raises(r"only one class \(cat\)", tmp_path)


def test_empty_class_folder(image_tree):
    (image_tree / "emu").mkdir()
    _raises("class folder .*emu holds no images", image_tree)


def test_unreadable_image_names_the_file(image_tree):
    (image_tree / "dog" / "broken.png").write_bytes(b"this is not a png")
    _raises("broken.png", image_tree)


def test_truncated_image_names_the_file(image_tree):
    path = image_tree / "dog" / "cut.png"
    write_png(path, (1, 2, 3), size=(64, 64))
    path.write_bytes(path.read_bytes()[:60])
    _raises("cut.png", image_tree, limit=100)


def test_mixed_images_and_clips(image_tree):
    write_gif(image_tree / "dog" / "moving.gif", [(0, 0, 0), (255, 255, 255)])
    _raises("mixes images and clips", image_tree)


def test_clips_of_different_lengths(clip_tree):
    write_gif(clip_tree / "left" / "long.gif", [frame_value(k) for k in range(7)])
    msg = _raises("different frame counts", clip_tree)
    assert "frames=" in msg
    assert load(clip_tree, frames=4).frames == 4


def test_empty_clip_folder(clip_tree):
    (clip_tree / "left" / "dir1").mkdir()
    _raises("clip folder .*dir1 holds no frame images", clip_tree)


def test_val_class_unknown_to_train(tmp_path):
    for split, classes in (("train", ("a", "b")), ("val", ("a", "c"))):
        for c in classes:
            write_png(tmp_path / split / c / "0.png", (1, 2, 3))
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
