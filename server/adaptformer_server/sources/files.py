"""file:// sources: a regular file of this server, inside one of ``adapter_source_dirs``.

The path is percent-decoded to bytes, so that a file is named by its bytes, UTF-8 or not (a NUL is refused); its
links and ``..`` are resolved before the directory check. Only a regular file is read: a FIFO, a socket, a device
or a directory is refused from its metadata, and the file is opened non-blocking, so that neither the open nor
the read can wait on a writer.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

from adaptformer_server.errors import Forbidden, NotFound, ValidationFailed
from adaptformer_server.settings import Settings
from adaptformer_server.sources.errors import too_large
from adaptformer_server.sources.redaction import printable, shown

__all__ = ["read"]

# POSIX flags (0 where the platform has none): no wait on a FIFO's writer, no controlling terminal, no link.
_OPEN = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NOFOLLOW", 0)


def read(source: str, settings: Settings) -> bytes:
    """The bytes of a file:// source.

    Raises:
        ValidationFailed: a malformed URL, a host, a relative path, a NUL or a name too long (422).
        Forbidden: a path outside the allowed directories, or one this server may not read (403).
        NotFound: no such file, or one that is not a regular file (404).
        PayloadTooLarge: a file over ``max_upload_bytes`` (413).
    """
    try:
        parts = urlsplit(source)
    except ValueError as e:
        raise ValidationFailed(f"source {shown(source)!r} is not a valid URL ({e})") from None
    if parts.netloc not in ("", "localhost"):
        raise ValidationFailed(
            f"file:// sources name a path on this server (file:///path), not host {printable(parts.netloc)!r}"
        )
    raw = unquote_to_bytes(parts.path)
    if b"\0" in raw:
        raise ValidationFailed(f"source {shown(source)!r}: the path holds a NUL byte (%00), which no file name has")
    path = os.fsdecode(raw)
    if not os.path.isabs(path):
        raise ValidationFailed("file:// sources need an absolute path (file:///srv/adapters/flowers.safetensors)")
    real = os.path.realpath(path)  # links and .. resolved before the allow-list check
    roots = [os.path.realpath(d) for d in settings.adapter_source_dirs]
    if not any(Path(real).is_relative_to(root) for root in roots):
        raise Forbidden(
            f"{printable(path)} is outside the directories file:// sources may come from "
            f"({', '.join(map(printable, roots)) or 'none set'}; ADAPTFORMER_ADAPTER_SOURCE_DIRS)"
        )
    try:
        return _read_regular(real, printable(path), settings)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no file {printable(path)}") from None
    except PermissionError:
        raise Forbidden(f"this server may not read {printable(path)}") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise ValidationFailed(f"{printable(path)}: a name in the path is too long ({e.strerror})") from None
        raise NotFound(f"cannot open {printable(path)}: {e.strerror}") from None


def _read_regular(real: str, named: str, settings: Settings) -> bytes:
    not_regular = NotFound(f"{named} is not a regular file (a directory, FIFO, socket or device); name a file")
    if not stat.S_ISREG(os.stat(real).st_mode):  # refused before any open: opening a FIFO waits for a writer
        raise not_regular
    with open(os.open(real, _OPEN), "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):  # replaced since it was looked at
            raise not_regular
        if info.st_size > settings.max_upload_bytes:
            raise too_large(info.st_size, settings)
        data = f.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise too_large(len(data), settings)
    return data
