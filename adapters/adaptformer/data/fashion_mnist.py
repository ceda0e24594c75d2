"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (gzipped IDX files, no download)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from adaptformer.errors import DataError

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_LABELS", "load_fashion_mnist"]

FASHION_MNIST_DIR = Path(os.environ.get("ADAPTFORMER_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_LABELS = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images, labels)``: uint8 arrays of shape (N, 28, 28) and (N,).

    Args:
        split: ``train`` (60,000 images) or ``test`` (10,000 images).
        root: Folder with the four gzipped IDX files.
    """
    root = root or FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        raise DataError(
            f"Fashion-MNIST files not found under {root}. "
            "Install them with: sudo apt-get install dataset-fashion-mnist "
            "(or set ADAPTFORMER_FASHION_MNIST_DIR to a folder holding the gzipped IDX files)"
        )
    return _read_idx(images_path), _read_idx(labels_path)
