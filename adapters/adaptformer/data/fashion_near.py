"""Near-domain tasks from the Fashion-MNIST images the embedded backbone never trained on.

The embedded backbone was pretrained on the 60,000 images of the train file (``adaptformer.pretrain``); the
10,000 images of the test file only measured its accuracy. These sources draw from the test file alone and
change the task, so a pretrained feature is useful but not sufficient:

- ``fashion-tint``: 10 classes = 5 pairs of garments (t-shirt or shirt, pullover or coat, trouser or dress,
  sandal or sneaker, bag or ankle boot) x 2 tints (warm orange, cool blue). The backbone saw grey images only.
- ``fashion-turned``: the 10 garment classes, inverted (a dark item on a light background) and turned a
  quarter turn clockwise. The backbone saw light items upright (and mirrored).

Both split the test file per class with the seed (``val_fraction`` of it is the validation split).
"""

from __future__ import annotations

import numpy as np

from adaptformer.data._util import check_memory, fill, image_source_frames, labels_tensor, split_stratified, take
from adaptformer.data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, load_fashion_mnist
from adaptformer.data.types import LabeledData, Splits
from adaptformer.preprocess import InputSpec, preprocess_image

__all__ = ["TINT_LABELS", "TURNED_LABELS", "load_fashion_tint_splits", "load_fashion_turned_splits"]

# Garment pairs by Fashion-MNIST class id (0 t-shirt, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal,
# 6 shirt, 7 sneaker, 8 bag, 9 ankle boot).
PAIRS = ((0, 6), (2, 4), (1, 3), (5, 7), (8, 9))
PAIR_NAMES = ("top", "warm layer", "long", "low shoe", "bag or boot")
TINTS = {"warm": (1.0, 0.55, 0.15), "cool": (0.15, 0.55, 1.0)}
TINT_LABELS = [f"{name}, {tint}" for name in PAIR_NAMES for tint in TINTS]
TURNED_LABELS = list(FASHION_MNIST_LABELS)


def _tint_item(image: np.ndarray, tint: int) -> np.ndarray:
    colour = np.asarray(list(TINTS.values())[tint], dtype=np.float32)
    return np.round(image[..., None].astype(np.float32) * colour).astype(np.uint8)


def _turn_item(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(255 - image, k=-1))


def _split(name: str, images, labels, make, spec, val_fraction, seed, limit, progress, classes, note) -> Splits:
    rng = np.random.default_rng(seed)
    train_pool, val_pool = split_stratified(labels, val_fraction, rng)
    train_idx = train_pool[take(labels[train_pool], limit, rng)]
    val_idx = val_pool[take(labels[val_pool], limit, rng)]
    check_memory(name, len(train_idx) + len(val_idx), 1, spec.size)

    def build(idx: np.ndarray, part: str) -> LabeledData:
        x = fill(idx, lambda i: preprocess_image(make(int(i)), spec), (3, spec.size, spec.size), f"{name} {part}",
                 progress)  # fmt: skip
        return LabeledData(x, labels_tensor(labels[idx]))

    train, val = build(train_idx, "train"), build(val_idx, "val")
    return Splits(
        train, val, list(classes), "image", 1,
        f"{name} ({note}; Fashion-MNIST test file only, {FASHION_MNIST_DIR}; {len(train)} train / {len(val)} val "
        f"of {len(labels)}, val_fraction={val_fraction}, seed={seed})",
    )  # fmt: skip


def load_fashion_tint_splits(
    spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None, progress: bool
) -> Splits:
    """Garment pair x tint (10 classes) from the 10,000 test-file images; the tint of each image is seeded."""
    image_source_frames("fashion-tint", frames)
    images, garments = load_fashion_mnist("test")
    pair_of = np.zeros(10, dtype=np.int64)
    for p, members in enumerate(PAIRS):
        pair_of[list(members)] = p
    # The tint does not depend on the split seed: an image is the same sample whatever the split.
    tint = np.random.default_rng(20_221_128).integers(0, len(TINTS), len(garments))
    labels = pair_of[garments] * len(TINTS) + tint
    return _split("fashion-tint", images, labels, lambda i: _tint_item(images[i], int(tint[i])), spec,
                  val_fraction, seed, limit, progress, TINT_LABELS, "garment pair x warm or cool tint")  # fmt: skip


def load_fashion_turned_splits(
    spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None, progress: bool
) -> Splits:
    """The 10 garment classes, inverted and turned a quarter turn, from the 10,000 test-file images."""
    image_source_frames("fashion-turned", frames)
    images, labels = load_fashion_mnist("test")
    labels = labels.astype(np.int64)
    return _split("fashion-turned", images, labels, lambda i: _turn_item(images[i]), spec, val_fraction, seed,
                  limit, progress, TURNED_LABELS, "inverted, quarter turn clockwise")  # fmt: skip
