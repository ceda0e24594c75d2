"""Adapters by reference: fetch the bytes of ``https://``, ``http://``, ``file://``, ``hf://`` or ``s3://`` sources
for POST /adapters.

Every scheme is off until an operator lists it in ``adapter_sources``; ``file://`` paths must also lie inside one of
``adapter_source_dirs``. The upload size limit holds while reading (a remote that sends more is cut off), the
whole fetch has ``source_timeout`` seconds, and an optional SHA-256 is checked before anything else looks at the
bytes. What comes back then gets exactly the checks of an upload.

``hf://owner/repo/path/file.safetensors[@revision]`` goes through ``huggingface_hub`` (an optional dependency; timm
brings it): its cache, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply as everywhere else it is used. Online, the file's
size is asked first, so a file over the limit is refused before it is downloaded.

``s3://bucket/key`` goes through ``s3fs`` (the ``s3`` extra: ``pip install "adaptformer-serve[s3]"``); credentials,
region and endpoint come from the environment as for any AWS client (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL`` for S3-compatible stores such as MinIO). The object's size is asked first.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from adaptformer_server.errors import ApiError, Forbidden, NotFound, PayloadTooLarge, ValidationFailed
from adaptformer_server.settings import Settings

__all__ = ["SCHEMES", "SourceTimeout", "SourceUnavailable", "fetch", "scheme_of"]

SCHEMES = ("https", "http", "file", "hf", "s3")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK = 1 << 16


class SourceUnavailable(ApiError):
    """The remote answered with an error or could not be reached."""

    status, code = 502, "source_unavailable"


class SourceTimeout(ApiError):
    """The remote did not deliver the whole file within ``source_timeout``."""

    status, code = 504, "source_timeout"


def scheme_of(source: str) -> str:
    """The scheme of a source (lower case), or ``"other"``: a metric label that never holds the URL."""
    scheme = urlsplit(source).scheme.lower()
    return scheme if scheme in SCHEMES else "other"


async def fetch(source: str, sha256: str | None, settings: Settings) -> bytes:
    """The bytes of ``source``, checked against ``sha256`` when given.

    Raises:
        Forbidden: the scheme is not enabled, or a file lies outside the allowed directories (403).
        ValidationFailed: a malformed source or checksum, or bytes that do not match it (422).
        NotFound: a file:// source that does not exist (404).
        PayloadTooLarge: more than ``max_upload_bytes`` (413).
        SourceUnavailable: the remote answered an error status or could not be reached (502).
        SourceTimeout: the remote took longer than ``source_timeout`` (504).
    """
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise ValidationFailed("sha256 must be 64 hex digits (the output of `sha256sum FILE`)")
    scheme = urlsplit(source).scheme.lower()
    if scheme not in SCHEMES:
        raise ValidationFailed(
            f"source {_shown(source)!r}: the scheme must be one of {', '.join(SCHEMES)} "
            "(e.g. https://example.com/flowers.safetensors)"
        )
    if scheme not in settings.adapter_sources:
        raise Forbidden(
            f"this server does not fetch {scheme}:// sources; an operator enables them with "
            f"ADAPTFORMER_ADAPTER_SOURCES={scheme} (or upload the file as multipart/form-data)"
        )
    if scheme == "file":
        data = await asyncio.to_thread(_read_file, source, settings)
    elif scheme == "hf":
        data = await _in_thread(_read_hub, source, settings)
    elif scheme == "s3":
        data = await _in_thread(_read_s3, source, settings)
    else:
        data = await _download(source, settings)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise ValidationFailed(
            f"the bytes of {_shown(source)!r} have SHA-256 {hashlib.sha256(data).hexdigest()}, not the {sha256.lower()} "
            "the request names; nothing was stored"
        )
    return data


def _too_large(size: int, settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the adapter source holds {size:,} bytes or more; the limit is {settings.max_upload_bytes:,} "
        "(ADAPTFORMER_MAX_UPLOAD_BYTES)"
    )


def _shown(source: str) -> str:
    """A source as error messages show it: without user:password and query (they may hold credentials)."""
    parts = urlsplit(source)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"[:300]


def _read_file(source: str, settings: Settings) -> bytes:
    parts = urlsplit(source)
    if parts.netloc not in ("", "localhost"):
        raise ValidationFailed(f"file:// sources name a path on this server (file:///path), not host {parts.netloc!r}")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise ValidationFailed("file:// sources need an absolute path (file:///srv/adapters/flowers.safetensors)")
    resolved = path.resolve()  # symbolic links and .. resolved before the allow-list check
    roots = [d.resolve() for d in settings.adapter_source_dirs]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise Forbidden(
            f"{path} is outside the directories file:// sources may come from "
            f"({', '.join(map(str, roots)) or 'none set'}; ADAPTFORMER_ADAPTER_SOURCE_DIRS)"
        )
    try:
        with resolved.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > settings.max_upload_bytes:
                raise _too_large(size, settings)
            data = f.read(settings.max_upload_bytes + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"no file {path}") from None
    except PermissionError:
        raise Forbidden(f"this server may not read {path}") from None
    if len(data) > settings.max_upload_bytes:
        raise _too_large(len(data), settings)
    return data


async def _download(source: str, settings: Settings) -> bytes:
    timeout = settings.source_timeout
    try:
        return await asyncio.wait_for(_stream(source, settings), timeout)
    except asyncio.TimeoutError:
        raise SourceTimeout(
            f"{_shown(source)} did not deliver the file within {timeout:g} s (ADAPTFORMER_SOURCE_TIMEOUT); "
            "nothing was stored"
        ) from None


async def _stream(source: str, settings: Settings) -> bytes:
    try:
        import httpx  # the client's dependency; a server that fetches no remote sources does without it
    except ImportError:
        raise SourceUnavailable("http(s) sources need httpx on the server: pip install httpx") from None
    limit = settings.max_upload_bytes
    shown = _shown(source)
    allowed = set(settings.adapter_sources)
    try:
        async with (
            httpx.AsyncClient(follow_redirects=True, max_redirects=5, timeout=settings.source_timeout) as client,
            client.stream("GET", source) as response,
        ):
            if response.url.scheme not in allowed:
                raise Forbidden(f"{shown} redirects to a {response.url.scheme}:// URL, a scheme not enabled here")
            if response.status_code >= 400:
                raise SourceUnavailable(
                    f"{shown} answered HTTP {response.status_code}; check the URL (nothing was stored)"
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(int(declared), settings)
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_raw(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise _too_large(total, settings)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise asyncio.TimeoutError from None
    except httpx.HTTPError as e:
        raise SourceUnavailable(f"cannot fetch {shown}: {type(e).__name__}: {e}"[:500]) from None


async def _in_thread(read: Callable[[str, Settings], bytes], source: str, settings: Settings) -> bytes:
    """``read(source, settings)`` (a blocking client library) in a thread, within ``source_timeout``."""
    timeout = settings.source_timeout
    try:  # the thread cannot be stopped: on a timeout it finishes on its own, its bytes unused
        return await asyncio.wait_for(asyncio.to_thread(read, source, settings), timeout)
    except asyncio.TimeoutError:
        raise SourceTimeout(
            f"{_shown(source)} did not deliver the file within {timeout:g} s (ADAPTFORMER_SOURCE_TIMEOUT); "
            "nothing was stored"
        ) from None


def _hub_reference(source: str) -> tuple[str, str, str | None]:
    """``hf://owner/repo/dir/file.safetensors@rev`` -> (``owner/repo``, ``dir/file.safetensors``, ``rev``)."""
    rest, at, revision = source[len("hf://") :].rpartition("@")
    if not at:
        rest, revision = revision, ""
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts) or ".." in parts:
        raise ValidationFailed(f"{_shown(source)!r}: hub sources are hf://OWNER/REPO/PATH/FILE.safetensors[@REVISION]")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision or None


def _read_hub(source: str, settings: Settings) -> bytes:
    repo, filename, revision = _hub_reference(source)
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise SourceUnavailable(
            "hf:// sources need huggingface_hub on the server: pip install huggingface_hub"
        ) from None
    shown = f"hf://{repo}/{filename}" + (f"@{revision}" if revision else "")
    limit = settings.max_upload_bytes
    timeout = settings.source_timeout
    try:
        if not constants.HF_HUB_OFFLINE:
            meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=timeout)
            if meta.size is not None and meta.size > limit:
                raise _too_large(meta.size, settings)
        path = Path(hf_hub_download(repo, filename, revision=revision, etag_timeout=timeout))
    except LocalEntryNotFoundError:
        raise SourceUnavailable(
            f"{shown} is not in the hub cache{' and HF_HUB_OFFLINE is set' if constants.HF_HUB_OFFLINE else ''}, "
            "or the hub cannot be reached"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise SourceUnavailable(f"{shown}: {type(e).__name__} (no such repository, revision or file, or no access "
                                "with this server's HF_TOKEN)") from None  # fmt: skip
    except HfHubHTTPError as e:
        raise SourceUnavailable(f"cannot fetch {shown}: {e}"[:500]) from None
    except OSError as e:
        raise SourceUnavailable(f"cannot fetch {shown}: {type(e).__name__}: {e}"[:500]) from None
    size = path.stat().st_size
    if size > limit:
        raise _too_large(size, settings)
    return path.read_bytes()


def _read_s3(source: str, settings: Settings) -> bytes:
    parts = urlsplit(source)
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    if not bucket or not key or parts.query or parts.fragment:
        raise ValidationFailed(f"{_shown(source)!r}: S3 sources are s3://BUCKET/KEY")
    try:
        import s3fs
    except ImportError:
        raise SourceUnavailable('s3:// sources need s3fs on the server: pip install "adaptformer-serve[s3]"') from None
    shown = f"s3://{bucket}/{key}"
    limit = settings.max_upload_bytes
    timeout = settings.source_timeout
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True, config_kwargs={"connect_timeout": timeout, "read_timeout": timeout}
    )
    try:
        size = fs.info(f"{bucket}/{key}").get("size")
        if size is not None and size > limit:
            raise _too_large(size, settings)
        with fs.open(f"{bucket}/{key}", "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise SourceUnavailable(f"{shown}: no such bucket or key") from None
    except PermissionError:
        raise SourceUnavailable(f"{shown}: access denied with this server's AWS credentials") from None
    except ApiError:
        raise
    except Exception as e:  # botocore and aiohttp raise many kinds; each is the remote's failure, not the user's
        raise SourceUnavailable(f"cannot fetch {shown}: {type(e).__name__}: {e}"[:500]) from None
    if len(data) > limit:
        raise _too_large(len(data), settings)
    return data
