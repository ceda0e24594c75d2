"""s3:// sources: ``s3://BUCKET/KEY`` through ``s3fs`` (the ``s3`` extra: ``pip install "adaptformer-serve[s3]"``).

Credentials, region and endpoint come from the environment as for any AWS client (``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for S3-compatible stores such as MinIO): the operator's, so the endpoint is
not subject to the address checks of http(s) sources. The object's size is asked first.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from adaptformer_server.errors import ApiError, ValidationFailed
from adaptformer_server.settings import Settings
from adaptformer_server.sources.errors import SourceUnavailable, too_large
from adaptformer_server.sources.redaction import printable, redact, shown

__all__ = ["read"]


def read(source: str, settings: Settings) -> bytes:
    """The bytes of an s3:// source.

    Raises:
        ValidationFailed: not of the form s3://BUCKET/KEY (422).
        PayloadTooLarge: an object over ``max_upload_bytes`` (413).
        SourceUnavailable: no such bucket or key, refused credentials, an unreachable store (502).
    """
    form = ValidationFailed(f"{shown(source)!r}: S3 sources are s3://BUCKET/KEY")
    try:
        parts = urlsplit(source)
    except ValueError:
        raise form from None
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    if not bucket or not key or parts.query or parts.fragment or any(c in bucket for c in "@:[]"):
        raise form
    try:
        import s3fs
    except ImportError:
        raise SourceUnavailable('s3:// sources need s3fs on the server: pip install "adaptformer-serve[s3]"') from None
    named = printable(f"s3://{bucket}/{key}")
    limit = settings.max_upload_bytes
    timeout = settings.source_timeout
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True, config_kwargs={"connect_timeout": timeout, "read_timeout": timeout}
    )
    try:
        size = fs.info(f"{bucket}/{key}").get("size")
        if size is not None and size > limit:
            raise too_large(size, settings)
        with fs.open(f"{bucket}/{key}", "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise SourceUnavailable(f"{named}: no such bucket or key") from None
    except PermissionError:
        raise SourceUnavailable(f"{named}: access denied with this server's AWS credentials") from None
    except ApiError:
        raise
    except Exception as e:  # botocore and aiohttp raise many kinds; each is the remote's failure, not the user's
        raise SourceUnavailable(f"cannot fetch {named}: {type(e).__name__}: {redact(str(e))}"[:500]) from None
    if len(data) > limit:
        raise too_large(len(data), settings)
    return data
