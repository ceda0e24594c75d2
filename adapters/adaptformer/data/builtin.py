"""Built-in image sources that need no download: Fashion-MNIST (Debian files) and scikit-learn's digits."""

from __future__ import annotations

import numpy as np

from adaptformer.data._util import check_memory, fill, image_source_frames, labels_tensor, split_stratified, take
from adaptformer.data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, load_fashion_mnist
from adaptformer.data.types import LabeledData, Splits
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec, preprocess_image

__all__ = ["DIGITS_LABELS", "load_digits_splits", "load_fashion_mnist_splits"]

DIGITS_LABELS = [str(d) for d in range(10)]


def _images(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, spec: InputSpec, desc: str, progress: bool):
    x = fill(idx, lambda i: preprocess_image(images[i], spec), (3, spec.size, spec.size), desc, progress)
    return LabeledData(x, labels_tensor(labels[idx]))


Picked = tuple[np.ndarray, np.ndarray, np.ndarray]  # images, labels, the indices of those in a split


def _image_splits(
    name: str, classes: list[str], train: Picked, val: Picked, spec: InputSpec, progress: bool, source: str
) -> Splits:
    """The preprocessed train and val splits of a grey image source, once they are known to fit in memory."""
    check_memory(name, len(train[2]) + len(val[2]), 1, spec.size)
    train_data = _images(*train, spec, f"{name} train", progress)
    val_data = _images(*val, spec, f"{name} val", progress)
    return Splits(train_data, val_data, list(classes), "image", 1, source)


def load_fashion_mnist_splits(
    spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None, progress: bool
) -> Splits:
    """Fashion-MNIST: train = the 60,000-image train file, val = the 10,000-image test file.

    ``val_fraction`` does not apply (the split is fixed). ``limit`` caps each split with a seeded,
    class-balanced selection.
    """
    del val_fraction
    image_source_frames("fashion-mnist", frames)
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    rng = np.random.default_rng(seed)
    train_idx = take(train_labels, limit, rng)
    val_idx = take(test_labels, limit, rng)
    source = (
        f"fashion-mnist ({FASHION_MNIST_DIR}; train file {len(train_idx)} of {len(train_labels)}, "
        f"test file as val {len(val_idx)} of {len(test_labels)})"
    )
    train, val = (train_images, train_labels, train_idx), (test_images, test_labels, val_idx)
    return _image_splits("fashion-mnist", FASHION_MNIST_LABELS, train, val, spec, progress, source)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as uint8 grey images (0..16 scaled to 0..255) and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits data set comes with scikit-learn, which is not installed: "
            'pip install scikit-learn (or pip install "adaptformer-serve[data]")'
        ) from None
    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def load_digits_splits(
    spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None, progress: bool
) -> Splits:
    """scikit-learn's 1,797 handwritten digits (8x8), split per class with the seed."""
    image_source_frames("digits", frames)
    images, labels = digits_arrays()
    rng = np.random.default_rng(seed)
    train_pool, val_pool = split_stratified(labels, val_fraction, rng)
    train_idx = train_pool[take(labels[train_pool], limit, rng)]
    val_idx = val_pool[take(labels[val_pool], limit, rng)]
    source = (
        f"digits (scikit-learn load_digits, 8x8 upscaled; {len(train_idx)} train / {len(val_idx)} val of "
        f"{len(labels)}, val_fraction={val_fraction}, seed={seed})"
    )
    train, val = (images, labels, train_idx), (images, labels, val_idx)
    return _image_splits("digits", DIGITS_LABELS, train, val, spec, progress, source)
