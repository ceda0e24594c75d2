"""The near-domain sources: drawn from the Fashion-MNIST test file only, balanced, and changed as described."""

from __future__ import annotations

import numpy as np
import pytest

from adaptformer.data import load_data, load_fashion_mnist
from adaptformer.data.fashion_mnist import FASHION_MNIST_DIR
from adaptformer.data.fashion_near import PAIRS, TINT_LABELS, _tint_item, _turn_item
from adaptformer.embedded import EMBEDDED_SPEC

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)


@pytest.mark.parametrize("source", ["fashion-tint", "fashion-turned"])
def test_split_sizes_and_balance(source):
    splits = load_data(source, EMBEDDED_SPEC, limit=200, progress=False)
    assert len(splits.labels) == 10
    assert splits.train.x.shape == (200, 3, 28, 28) and len(splits.val) == 200
    assert set(np.bincount(splits.train.y.numpy()).tolist()) == {20}
    assert "test file only" in splits.source and splits.description


def test_items_come_from_the_test_file_not_the_pretraining_file():
    """Turned items are the test file's images, inverted and turned: none is a training-file image."""
    test_images, _ = load_fashion_mnist("test")
    train_images, _ = load_fashion_mnist("train")
    seen = {im.tobytes() for im in train_images}
    made = [_turn_item(im) for im in test_images[:50]]
    assert all(np.array_equal(np.rot90(255 - m, k=1), im) for m, im in zip(made, test_images[:50], strict=True))
    assert not any(im.tobytes() in seen for im in test_images[:50])


def test_tint_labels_pair_garments_and_colours():
    assert len(TINT_LABELS) == 10 and sorted(g for p in PAIRS for g in p) == list(range(10))
    grey = np.full((28, 28), 200, np.uint8)
    warm, cool = _tint_item(grey, 0), _tint_item(grey, 1)
    assert warm[0, 0, 0] > warm[0, 0, 2] and cool[0, 0, 2] > cool[0, 0, 0]
