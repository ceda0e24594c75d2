"""Sources as messages and logs show them: a URL may carry credentials in its user info and in its query.

Error messages show a source without either (:func:`shown`). Log lines written while a source is fetched, by the
server or by the client libraries it calls (httpx logs every request it sends at INFO), show every URL with its
user info and query values replaced by ``***`` (:func:`redacted_logs`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["cover_loggers", "printable", "redact", "redacted_logs", "shown"]

# The loggers of the libraries a fetch goes through (huggingface_hub's HTTP client is httpx2).
_LIBRARIES = ("httpx", "httpx2", "httpcore", "huggingface_hub", "s3fs", "aiobotocore", "botocore", "urllib3")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]*")
_SHOWN = 300

# True in the task that fetches a source and in the threads it starts (both copy the context).
_fetching: ContextVar[bool] = ContextVar("adaptformer_source_fetch", default=False)


def printable(text: str) -> str:
    """``text`` with every unprintable character (a control, a lone surrogate) escaped: safe in JSON and logs."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def shown(source: str) -> str:
    """A source as error messages show it: no user info, query or fragment, printable, at most 300 characters.

    String operations only, so that it never fails, whatever the source holds.
    """
    scheme, sep, rest = source.partition("://")
    if not sep:
        return printable(source.partition(":")[0][:_SHOWN]) + ":..."
    authority, path = _authority(rest)
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    return printable(f"{scheme}://{authority.rpartition('@')[2]}{path}")[:_SHOWN]


def redact(text: str) -> str:
    """``text`` with the user info, query values and fragment of every URL in it replaced by ``***``."""
    return _URL.sub(lambda match: _redacted(match.group(0)), text)


def _authority(rest: str) -> tuple[str, str]:
    """What follows ``scheme://`` split into the authority (up to ``/``, ``?`` or ``#``) and the rest."""
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    return rest[:end], rest[end:]


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    authority, tail = _authority(rest)
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    tail, fragment, _ = tail.partition("#")
    path, query_mark, query = tail.partition("?")
    if query_mark:
        query = "&".join(_masked(item) for item in query.split("&"))
    return f"{scheme}://{authority}{path}{query_mark}{query}{'#***' if fragment else ''}"


def _masked(item: str) -> str:
    """``key=value`` -> ``key=***``; a bare item (it may be a token itself) -> ``***``."""
    if "=" in item:
        return item.partition("=")[0] + "=***"
    return "***" if item else ""


class _Redact(logging.Filter):
    """Redacts the URLs of records logged while a source is fetched; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _fetching.get():
            try:
                text = record.getMessage()
            except Exception:  # a record that cannot be formatted is the handler's to report
                return True
            clean = redact(text)
            if clean != text:
                record.msg, record.args = clean, None
        return True


_FILTER = _Redact()


def cover_loggers() -> None:
    """Puts the filter on the libraries' loggers, children included: a logger's filters do not see its children's
    records. Called again after a library is imported, for the loggers its import created."""
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in _LIBRARIES]
    for name in {*_LIBRARIES, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@contextmanager
def redacted_logs() -> Iterator[None]:
    """Log lines are redacted while it lasts, in this context: the fetching task and the threads it starts."""
    cover_loggers()
    token = _fetching.set(True)
    try:
        yield
    finally:
        _fetching.reset(token)
