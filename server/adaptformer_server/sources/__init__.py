"""Adapters by reference: fetch the bytes of ``https://``, ``http://``, ``file://``, ``hf://`` or ``s3://`` sources
for POST /adapters.

Every scheme is off until an operator lists it in ``adapter_sources``. A source is checked as text first (at most
:data:`MAX_SOURCE` printable characters, ``scheme://...``), then by the module of its scheme: :mod:`.web`
(redirects checked hop by hop, addresses by :mod:`.addresses`, Content-Encoding decoded by :mod:`.decoding`),
:mod:`.files`, :mod:`.hub` or :mod:`.s3`. The upload size limit holds while reading, the whole fetch has
``source_timeout`` seconds, and an optional SHA-256 is checked before anything else looks at the bytes; what comes
back then gets exactly the checks of an upload. A malformed source is 422, like every other invalid field of the
request; a remote that fails is 502, or 504 when it is too slow. Messages and log lines never show a source's
user info or query (:mod:`.redaction`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable

from adaptformer_server.errors import Forbidden, ValidationFailed
from adaptformer_server.settings import Settings
from adaptformer_server.sources import files, hub, s3, web
from adaptformer_server.sources.errors import SourceTimeout, SourceUnavailable
from adaptformer_server.sources.redaction import redacted_logs, shown

__all__ = ["MAX_SOURCE", "SCHEMES", "SourceTimeout", "SourceUnavailable", "fetch", "scheme_of"]

SCHEMES = ("https", "http", "file", "hf", "s3")
MAX_SOURCE = 8192  # characters; a presigned URL has a few hundred
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# The blocking readers, run in a thread; http(s) is read on the event loop.
_READERS: dict[str, Callable[[str, Settings], bytes]] = {"file": files.read, "hf": hub.read, "s3": s3.read}


def scheme_of(source: str) -> str:
    """The scheme of a source (lower case), or ``"other"``: a metric label that never holds the URL."""
    match = _SCHEME.match(source)
    scheme = match.group(1).lower() if match else ""
    return scheme if scheme in SCHEMES else "other"


async def fetch(source: str, sha256: str | None, settings: Settings) -> bytes:
    """The bytes of ``source``, checked against ``sha256`` when given.

    Raises:
        Forbidden: the scheme is not enabled, a redirect leads to one that is not, a file lies outside the allowed
            directories, or an http(s) host has an address that is not public (403).
        ValidationFailed: a malformed source or checksum, or bytes that do not match it (422).
        NotFound: a file:// source that does not exist or is not a regular file (404).
        PayloadTooLarge: more than ``max_upload_bytes`` (413).
        SourceUnavailable: the remote answered an error status or could not be reached (502).
        SourceTimeout: the remote took longer than ``source_timeout`` (504).
    """
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise ValidationFailed("sha256 must be 64 hex digits (the output of `sha256sum FILE`)")
    scheme = scheme_of(source)
    if scheme == "other":
        raise ValidationFailed(
            f"source {shown(source)!r}: the scheme must be one of {', '.join(SCHEMES)} "
            "(e.g. https://example.com/flowers.safetensors)"
        )
    if scheme not in settings.adapter_sources:
        raise Forbidden(
            f"this server does not fetch {scheme}:// sources; an operator enables them with "
            f"ADAPTFORMER_ADAPTER_SOURCES={scheme} (or upload the file as multipart/form-data)"
        )
    _check_text(source, scheme)
    read = _READERS.get(scheme)
    timeout = settings.source_timeout
    with redacted_logs():
        work = asyncio.to_thread(read, source, settings) if read else web.download(source, settings)
        try:  # a thread cannot be stopped: on a timeout it finishes on its own, its bytes unused
            data = await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError:
            raise SourceTimeout(
                f"{shown(source)} did not deliver the file within {timeout:g} s (ADAPTFORMER_SOURCE_TIMEOUT); "
                "nothing was stored"
            ) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise ValidationFailed(
            f"the bytes of {shown(source)!r} have SHA-256 {hashlib.sha256(data).hexdigest()}, not the "
            f"{sha256.lower()} the request names; nothing was stored"
        )
    return data


def _check_text(source: str, scheme: str) -> None:
    """Raises ValidationFailed unless ``source`` is short, printable and of the form ``scheme://...``."""
    if len(source) > MAX_SOURCE:
        raise ValidationFailed(f"the source is {len(source):,} characters long; at most {MAX_SOURCE:,} are accepted")
    bad = next((i for i, c in enumerate(source) if not c.isprintable()), None)
    if bad is not None:
        raise ValidationFailed(
            f"source {shown(source)!r} holds a control character or an unprintable code point at position {bad}; "
            "percent-encode it (%0A for a newline)"
        )
    if not source[len(scheme) + 1 :].startswith("//"):
        raise ValidationFailed(
            f"source {shown(source)!r} is not a URL of the form scheme://... "
            "(e.g. https://example.com/flowers.safetensors, file:///srv/adapters/flowers.safetensors)"
        )
