"""Data sets for training adapters, preprocessed with the same code the server runs on requests.

>>> from adaptformer.data import load_data
>>> from adaptformer.embedded import EMBEDDED_SPEC
>>> splits = load_data("digits", EMBEDDED_SPEC, limit=100, progress=False)
>>> splits.train.x.shape, splits.labels[:3]
(torch.Size([100, 3, 32, 32]), ['0', '1', '2'])
"""

from adaptformer.data.decode import open_clip, open_image
from adaptformer.data.emoji import emoji_glyphs, emoji_table
from adaptformer.data.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist
from adaptformer.data.folders import IMAGE_EXTENSIONS
from adaptformer.data.motion import MOTION_LABELS, motion_clip
from adaptformer.data.sources import BUILTIN_SOURCES, load_data
from adaptformer.data.types import LabeledData, Splits

__all__ = [
    "BUILTIN_SOURCES",
    "FASHION_MNIST_LABELS",
    "IMAGE_EXTENSIONS",
    "MOTION_LABELS",
    "LabeledData",
    "Splits",
    "emoji_glyphs",
    "emoji_table",
    "load_data",
    "load_fashion_mnist",
    "motion_clip",
    "open_clip",
    "open_image",
]
