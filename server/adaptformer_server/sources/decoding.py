"""Bodies sent with a Content-Encoding, decoded a piece at a time: a piece is about 64 KiB at most whatever the
compression ratio, so that the size limit holds for the decoded bytes (a bomb stops at the limit, not in memory).

Decoded: gzip (and x-gzip; several members too), deflate (zlib-wrapped or raw) and, where the ``brotli`` package
can bound its output (1.2 or newer), br. :data:`ACCEPT` offers exactly those.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

__all__ = ["ACCEPT", "PIECE", "Decoder", "DecodingError", "decoder_for"]

PIECE = 1 << 16


class DecodingError(ValueError):
    """A body that does not decode as its Content-Encoding says, or a coding this server does not decode."""


class Decoder(Protocol):
    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of the next part of the body, in pieces of about :data:`PIECE` bytes at most."""
        ...

    def finish(self) -> None:
        """Raises :class:`DecodingError` when the body ended before its encoded stream did."""
        ...


def _brotli() -> Any:
    try:
        import brotli
    except ImportError:
        return None
    return brotli if hasattr(brotli.Decompressor, "can_accept_more_data") else None


ACCEPT = "gzip, deflate, br" if _brotli() is not None else "gzip, deflate"


def decoder_for(content_encoding: str) -> Decoder:
    """The decoder of a ``Content-Encoding`` header (codings listed in the order they were applied).

    Raises:
        DecodingError: a coding this server does not decode.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    decoders = [_decoder(c) for c in reversed(codings) if c != "identity"]
    return decoders[0] if len(decoders) == 1 else _Chain(decoders)


def _decoder(coding: str) -> Decoder:
    if coding in ("gzip", "x-gzip"):
        return _Zlib("gzip")
    if coding == "deflate":
        return _Zlib("deflate")
    if coding == "br" and _brotli() is not None:
        return _Brotli()
    raise DecodingError(f"Content-Encoding {coding!r}, which this server does not decode (it asks for {ACCEPT})")


class _Chain:
    """Several decoders, or none (identity): each one's pieces go through the next, lazily."""

    def __init__(self, decoders: list[Decoder]) -> None:
        self._decoders = decoders

    def decode(self, data: bytes) -> Iterator[bytes]:
        pieces: Iterable[bytes] = (data,) if data else ()
        for decoder in self._decoders:
            pieces = _through(decoder, pieces)
        yield from pieces

    def finish(self) -> None:
        for decoder in self._decoders:
            decoder.finish()


def _through(decoder: Decoder, pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield from decoder.decode(piece)


class _Zlib:
    """gzip (members one after the other) or deflate (zlib-wrapped or raw: told by its first two bytes)."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._head = b""
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if coding == "gzip" else None

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._inflate is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            wrapped = data[0] & 0x0F == 8 and int.from_bytes(data[:2], "big") % 31 == 0
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        try:
            while True:
                piece = self._inflate.decompress(data, PIECE)
                if piece:
                    yield piece
                if self._inflate.eof:
                    data = self._inflate.unused_data
                    if not data or self._coding != "gzip":  # after a deflate stream: nothing more is read
                        return
                    self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
                    continue
                data = self._inflate.unconsumed_tail
                if not data and len(piece) < PIECE:
                    return
        except zlib.error as e:
            raise DecodingError(f"a body that does not decode as {self._coding}: {e}") from None

    def finish(self) -> None:
        if self._inflate is None or not self._inflate.eof:
            raise DecodingError(f"a body that ends before its {self._coding} stream does")


class _Brotli:
    def __init__(self) -> None:
        self._brotli = _brotli()
        self._inflate = self._brotli.Decompressor()

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:  # a piece may pass the limit by a part of it: brotli stops growing its buffer once at the limit
            piece = self._inflate.process(data, output_buffer_limit=PIECE)
            while piece:
                yield piece
                if self._inflate.is_finished():
                    return
                piece = self._inflate.process(b"", output_buffer_limit=PIECE)
        except self._brotli.error as e:
            raise DecodingError(f"a body that does not decode as br: {e}") from None

    def finish(self) -> None:
        if not self._inflate.is_finished():
            raise DecodingError("a body that ends before its br stream does")
