"""What the data-set tests build on: a small input spec, the marks for data from system packages, and image and
clip trees written with PIL (the fixtures of conftest.py in this folder use them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from adaptformer.data import Splits, load_data
from adaptformer.data import emoji as emoji_mod
from adaptformer.data import fashion_mnist as fmnist_mod
from adaptformer.preprocess import InputSpec

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


def write_png(path: Path, colour, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_gif(path: Path, colours, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("RGB", size, c) for c in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def frame_value(frame_colour: int) -> tuple[int, int, int]:
    return (frame_colour * 20, 0, 0)
