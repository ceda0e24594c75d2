"""The errors of adapter sources that the rest of the API has no class for, and the 413 every reader raises."""

from __future__ import annotations

from adaptformer_server.errors import ApiError, PayloadTooLarge
from adaptformer_server.settings import Settings

__all__ = ["SourceTimeout", "SourceUnavailable", "too_large"]


class SourceUnavailable(ApiError):
    """The remote answered with an error, sent what cannot be read, or could not be reached."""

    status, code = 502, "source_unavailable"


class SourceTimeout(ApiError):
    """The remote did not deliver the whole file within ``source_timeout``."""

    status, code = 504, "source_timeout"


def too_large(size: int, settings: Settings) -> PayloadTooLarge:
    """The 413 of a source that holds (or sent, or decodes to) ``size`` bytes or more."""
    return PayloadTooLarge(
        f"the adapter source holds {size:,} bytes or more; the limit is {settings.max_upload_bytes:,} "
        "(ADAPTFORMER_MAX_UPLOAD_BYTES)"
    )
