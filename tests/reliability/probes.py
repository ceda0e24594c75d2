"""What the probed-request tests send and check: their server's limits, payloads (GIF and TIFF clips with frames of
any size), metric samples, and the checks a case ends with. The server is ``probed_server`` (tests/reliability/conftest.py).
"""

from __future__ import annotations

import re
import struct

import httpx
from PIL import Image

from benchmarks.reliability import Kit, Server
from tests.support import encode, png

MAX_IMAGE_PIXELS = 2_000_000
MAX_REQUEST_PIXELS = 4_000_000
TIMEOUT_S = 2
SIZE = 28  # the input side of the embedded architecture's tasks


def png_side(side: int) -> bytes:
    return png(size=side, color=(0, 90, 200))


def gif_frame(img: Image.Image) -> bytes:
    """The image descriptor and data of a one-frame GIF, its palette moved into a local color table."""
    data = encode(img, "GIF")
    packed = data[10]
    table = data[13 : 13 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)]
    pos = 13 + len(table)
    while data[pos] == 0x21:  # extension blocks
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    descriptor = bytearray(data[pos : pos + 10])
    descriptor[9] = (descriptor[9] & 0x78) | 0x80 | (packed & 7)
    return bytes(descriptor) + table + data[pos + 10 : -1]


def gif_of(sides: list[int]) -> bytes:
    """An animated GIF on an 8x8 canvas whose frames have the given sides (a frame may be larger than the
    canvas: decoders grow the canvas to it)."""
    frames = [Image.new("P", (s, s), i + 1) for i, s in enumerate(sides)]
    return b"GIF89a" + struct.pack("<HHBBB", 8, 8, 0, 0, 0) + b"".join(gif_frame(f) for f in frames) + b";"


def tiff_of(sides: list[int]) -> bytes:
    pages = [Image.new("RGB", (s, s), (i * 40, 0, 0)) for i, s in enumerate(sides)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:], compression="tiff_deflate")


def make_victim(server: Server, kit: Kit) -> str:
    """A task the Host and Origin tests may lose: they must not delete one the other tests use."""
    if httpx.get(f"{server.url}/adapters/victim", timeout=30).status_code == 404:
        files = {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}
        r = httpx.post(f"{server.url}/adapters", data={"task": "victim"}, files=files, timeout=30)
        assert r.status_code == 201, r.text
    return "victim"


def metrics(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=30).text


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
            out.append((labels, float(m.group(2))))
    return out


def healthy(server: Server) -> None:
    assert server.alive()
    r = httpx.post(
        f"{server.url}/predict", params={"task": "t00"}, content=png_side(40), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 200, r.text


def clip_ok(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/predict",
        params={"task": "clip4"},
        content=gif_of([8, 8, 8, 8]),
        headers={"Content-Type": "image/gif"},
    )
    assert r.status_code == 200, r.text
