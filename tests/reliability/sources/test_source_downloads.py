"""Adapter sources: a file:// source that is no regular file is refused at once; a compressed download is decoded, and the size limit
holds for the decoded bytes.
(Fixtures: conftest.py in this folder.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import socket
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.sources.calls import message, register, sha
from tests.support import serving

# -- 10. a file:// source that is no regular file is refused at once ---------------------------------------------


async def test_a_fifo_socket_or_directory_source_is_refused_at_once(app, allowed: Path, data: bytes):
    fifo = allowed / "pipe.safetensors"
    os.mkfifo(fifo)
    (allowed / "link.safetensors").symlink_to(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(allowed / "sock.safetensors"))
    (allowed / "dir.safetensors").mkdir()
    (allowed / "flowers.safetensors").write_bytes(data)
    try:
        async with serving(app(adapter_sources="file")) as client:
            for name in ("pipe", "link", "sock", "dir"):
                r = await asyncio.wait_for(register(client, f"file://{allowed}/{name}.safetensors"), 10)
                assert r.status_code == 404, (name, r.text)
                assert "not a regular file" in message(r), r.text
            r = await register(client, f"file://{allowed}/flowers.safetensors", sha256=sha(data))
            assert r.status_code == 201, r.text
    finally:
        sock.close()
        with contextlib.suppress(OSError):  # a reader left blocked on the FIFO (before the fix) gets its end of file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


# -- 14. a compressed download is decoded, and the limit holds for the decoded bytes ---------------------------------


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _brotli(data: bytes) -> bytes:
    brotli = pytest.importorskip("brotli")
    return brotli.compress(data, quality=1)


ENCODINGS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", _raw_deflate),
    ("br", _brotli),
    ("gzip, br", lambda d: _brotli(gzip.compress(d))),
    ("identity", lambda d: d),
]


@pytest.mark.parametrize(("encoding", "encode"), ENCODINGS)
async def test_a_compressed_download_is_decoded_before_its_checks(app, remotes, data, encoding, encode):
    remote = remotes()
    url = remote.serve("/flowers.safetensors", encode(data), **{"Content-Encoding": encoding})
    two_members = remote.serve("/two.safetensors", gzip.compress(data[:100]) + gzip.compress(data[100:]),
                               **{"Content-Encoding": "gzip"})  # fmt: skip
    async with serving(app(adapter_sources="http", allow_private_sources=True)) as client:
        for source in (url, two_members):
            r = await register(client, source, sha256=sha(data))
            assert r.status_code == 201, r.text
    offered = {c.strip() for c in remote.requests[0][1]["accept-encoding"].split(",")}
    assert offered <= {"gzip", "deflate", "br"}  # only codings the fetch decodes


def _bomb(encoding: str, size: int) -> bytes:
    zeros = b"\0" * (1 << 20)
    if encoding == "br":
        brotli = pytest.importorskip("brotli")
        compressor = brotli.Compressor(quality=1)
        return b"".join(compressor.process(zeros) for _ in range(size >> 20)) + compressor.finish()
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    return b"".join(c.compress(zeros) for _ in range(size >> 20)) + c.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_compression_bomb_stops_at_the_limit(app, remotes, encoding: str):
    remote = remotes()
    url = remote.serve("/bomb.safetensors", _bomb(encoding, 64 << 20), **{"Content-Encoding": encoding})
    async with serving(app(adapter_sources="http", allow_private_sources=True, max_upload_bytes=1 << 20)) as client:
        r = await asyncio.wait_for(register(client, url), 20)
    assert r.status_code == 413, r.text
    assert "limit is 1,048,576" in message(r)


async def test_a_body_that_does_not_decode_is_502(app, remotes, data):
    remote = remotes()
    remote.serve("/zstd.safetensors", data, **{"Content-Encoding": "zstd-or-other"})
    remote.serve("/corrupt.safetensors", b"\x1f\x8b\x08\x00garbage-not-gzip", **{"Content-Encoding": "gzip"})
    remote.serve("/cut.safetensors", gzip.compress(data)[:-500], **{"Content-Encoding": "gzip"})
    async with serving(app(adapter_sources="http", allow_private_sources=True)) as client:
        for path, words in [
            ("/zstd.safetensors", "Content-Encoding"),
            ("/corrupt.safetensors", "gzip"),
            ("/cut.safetensors", "ends before"),
        ]:
            r = await register(client, remote.url + path)
            assert r.status_code == 502, (path, r.text)
            assert words in message(r), r.text
