"""The tensor decode path: JPEG and PNG stills decoded by torchvision (nvJPEG on CUDA), resized and normalised
as tensor ops, several images at once.

PIL (``adaptformer.data.decode`` + ``adaptformer.preprocess``) stays the reference and the fallback: this path
takes only what it decodes the same way, and the caller hands everything else to PIL:

- baseline or progressive JPEG in YCbCr or greyscale (no CMYK), without an EXIF rotation;
- 8-bit greyscale or RGB PNG (no palette, alpha or 16-bit samples, no ``eXIf`` chunk).

Those are what :func:`probe` says ``fast``. Sizes come from the header before anything is decoded (the caller
checks them against the pixel limits first); a decoded size that differs from the header's is refused. A decoder
error here is not the input's verdict: the caller retries the image with PIL, whose errors are the answer.

Results equal the PIL path within 4/255 of a pixel per value, 3/255 at the 99.9th percentile and 0.3/255 on
average (before normalisation; tests/server/test_fast_path.py): both resize with the same kernels (bicubic with
a = -0.5 and bilinear widened when downscaling: torch's ``antialias=True``; nearest at pixel centres), the
differences come from PIL's fixed-point resampling and the JPEG decoders' rounding. On a CPU the two paths cost
about the same, so the server uses this one where images decode on a GPU (``fast_decode=auto``).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from adaptformer.data.decode import IMAGE_FORMATS
from adaptformer.preprocess import InputSpec

__all__ = ["Probe", "available", "decode_uint8", "preprocess_batch", "probe"]

_DEVICE_LOCK = threading.Lock()
_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest-exact"}  # nearest-exact: PIL's centres

try:
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png
except ImportError:  # pragma: no cover - torchvision is a dependency; a broken install falls back to PIL
    decode_jpeg = decode_png = ImageReadMode = None  # type: ignore[assignment,misc]


def available() -> bool:
    """Whether torchvision's decoders import here."""
    return decode_jpeg is not None


@dataclass(frozen=True)
class Probe:
    """What an image's header says, read without decoding its pixels."""

    format: str | None  # Pillow format id; None: unreadable (decoding says why)
    width: int = 0
    height: int = 0
    fast: bool = False  # the tensor path decodes it as PIL would
    animated: bool = False  # several frames (an animation, a multi-page TIFF)

    @property
    def pixels(self) -> int:
        return min(self.width * self.height, 1 << 62)


def probe(data: bytes) -> Probe:
    """The header of an encoded image: format, size and whether the tensor path takes it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as img:
                w, h = img.size
                fmt, mode = img.format, img.mode
                fast = False
                if fmt == "JPEG":
                    fast = mode in ("RGB", "L") and img.getexif().get(0x0112, 1) == 1
                elif fmt == "PNG":
                    # IHDR: bit depth at byte 24, colour type at 25 (0 grey, 2 RGB)
                    fast = len(data) > 25 and data[24] == 8 and data[25] in (0, 2) and b"eXIf" not in data
                # is_animated looks for a second frame only; n_frames would walk a GIF to its end
                animated = bool(getattr(img, "is_animated", False))
                return Probe(fmt, w, h, fast and not animated, animated)
    except Exception:
        return Probe(None)


def decode_uint8(items: Sequence[tuple[bytes, Probe]], device: torch.device | None = None) -> list[torch.Tensor]:
    """Decodes images the probe marked ``fast`` into uint8 RGB tensors [3, H, W].

    JPEGs are decoded on ``device`` when it is a CUDA device (nvJPEG, all of them in one call); PNGs on the CPU
    (then moved to ``device``).

    Raises:
        RuntimeError: a decoder failed or a decoded size differs from the header's (retry with PIL).
    """
    if not available():
        raise RuntimeError("torchvision's image decoders are not available")
    out: list[torch.Tensor | None] = [None] * len(items)
    cuda = device is not None and device.type == "cuda"
    jpegs = [i for i, (_, p) in enumerate(items) if p.format == "JPEG"]
    for i, (data, p) in enumerate(items):
        if not p.fast:
            raise RuntimeError(f"image {i + 1}: not for the tensor path ({p.format})")
        if p.format == "PNG" or not cuda:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            fn = decode_png if p.format == "PNG" else decode_jpeg
            out[i] = fn(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    if cuda and jpegs:
        raws = [torch.frombuffer(bytearray(items[i][0]), dtype=torch.uint8) for i in jpegs]
        with _DEVICE_LOCK:  # one nvJPEG batch at a time: the decode threads share torchvision's decoder
            decoded = decode_jpeg(raws, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        for i, x in zip(jpegs, decoded, strict=True):
            out[i] = x
    result = []
    for i, x in enumerate(out):
        assert x is not None
        p = items[i][1]
        if x.dtype != torch.uint8 or tuple(x.shape) != (3, p.height, p.width):
            raise RuntimeError(f"image {i + 1}: decoded as {tuple(x.shape)}, the header says {p.width}x{p.height}")
        result.append(x.to(device) if device is not None else x)
    return result


def preprocess_batch(images: Sequence[torch.Tensor], spec: InputSpec) -> list[torch.Tensor]:
    """Resizes uint8 RGB tensors [3, H, W] to the spec's square and normalises them: float32 [3, S, S] each.

    Images of one size are resized together (one interpolation call); the results stay on the images' device.
    """
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(images):
        groups.setdefault((tuple(x.shape), x.device), []).append(i)
    size = (spec.size, spec.size)
    for (shape, device), idx in groups.items():
        x = torch.stack([images[i] for i in idx]).float()
        if tuple(shape[1:]) != size:
            mode = _MODES[spec.interpolation]
            if mode == "nearest-exact":
                x = F.interpolate(x, size=size, mode=mode)
            else:
                x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255)  # PIL resizes to 8-bit pixels: the same rounding
        mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255.0
        x = (x - mean) / std
        for j, i in enumerate(idx):
            out[i] = x[j]
    return out  # type: ignore[return-value]
