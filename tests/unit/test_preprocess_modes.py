"""Images reach the model as a viewer shows them: EXIF orientation, 16-bit grey, CMYK, palettes, grey + alpha."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.preprocess import InputSpec, preprocess_image

SPEC = InputSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="nearest")


def _reopen(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def _asymmetric() -> Image.Image:
    """16x16 RGB with a bright top-left corner and a red right edge: every rotation or flip changes it."""
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:6, :6] = 255
    arr[:, 14:, 0] = 200
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    ("orientation", "shown"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),  # stored sideways: shown turned 90 degrees clockwise
        (8, Image.Transpose.ROTATE_90),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientation_is_applied(orientation, shown) -> None:
    stored = _asymmetric()
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = _reopen(stored, "PNG", exif=exif)
    expected = preprocess_image(stored.transpose(shown), SPEC)
    assert torch.equal(preprocess_image(tagged, SPEC), expected)
    assert not torch.equal(preprocess_image(stored, SPEC), expected)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey8 = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    grey16 = grey8.astype(np.uint16) * 257  # the same picture in 16 bits
    img16 = _reopen(Image.fromarray(grey16), "PNG")
    assert img16.mode.startswith("I")
    got = preprocess_image(img16, SPEC)
    assert torch.allclose(got, preprocess_image(Image.fromarray(grey8), SPEC), atol=1e-6)
    assert got.min() < -0.9  # the dark end stays dark (PIL's own conversion makes nearly all of it white)


def test_cmyk_matches_its_rgb() -> None:
    rgb = _asymmetric()
    cmyk = _reopen(rgb.convert("CMYK"), "TIFF")
    assert cmyk.mode == "CMYK"
    assert torch.allclose(preprocess_image(cmyk, SPEC), preprocess_image(rgb, SPEC), atol=2 / 255)


def test_palette_and_grey_alpha_show_transparency_as_white() -> None:
    la = Image.new("LA", (16, 16), (0, 0))  # fully transparent black
    la.paste((30, 255), (0, 0, 8, 16))  # left half: opaque dark grey
    x = preprocess_image(_reopen(la, "PNG"), SPEC)
    assert torch.allclose(x[:, :, 8:], torch.ones(3, 16, 8))  # white where transparent
    assert torch.allclose(x[:, :, :8], torch.full((3, 16, 8), 30 / 255 * 2 - 1))

    p = _asymmetric().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    p.info["transparency"] = p.getpixel((0, 0))
    x = preprocess_image(_reopen(p, "PNG", transparency=p.getpixel((0, 0))), SPEC)
    assert torch.allclose(x[:, 0, 0], torch.ones(3))
