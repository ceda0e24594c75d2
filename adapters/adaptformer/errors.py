"""Exceptions the library raises for a user's mistake; each message says what was wrong and what was expected."""

from __future__ import annotations

__all__ = [
    "AdapterFormatError",
    "AdaptformerError",
    "DataError",
    "IncompatibleAdapterError",
    "UnsupportedModelError",
]


class AdaptformerError(Exception):
    """Base class of every error the library raises on purpose."""


class UnsupportedModelError(AdaptformerError, TypeError):
    """The model is not a timm VisionTransformer whose blocks can take an adapter."""


class AdapterFormatError(AdaptformerError, ValueError):
    """The file is not a valid adapter file (not safetensors, missing or malformed metadata, bad values)."""


class IncompatibleAdapterError(AdaptformerError, ValueError):
    """The adapter file is valid but does not fit this backbone (fingerprint or shapes).

    Attributes:
        check: Short name of the check that failed (``fingerprint``, ``shapes``, ``modality``...).
    """

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.check = check


class DataError(AdaptformerError, ValueError):
    """A data set cannot be read or is unusable (empty, one class, unreadable files)."""


class InputTooLargeError(DataError):
    """An input exceeds a limit (pixels, frames): a server answers 413, not 400."""
