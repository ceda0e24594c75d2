"""Turning what a caller passes as an image (path, bytes, file, PIL image, numpy array) into bytes to upload.

Pillow and numpy are optional: bytes, paths and files never import them. A PIL image or an array needs Pillow,
imported only then.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeGuard, Union, cast

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["ImageInput", "encode_clip", "encode_image"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], "Image.Image", "np.ndarray"]
EncodedImage = tuple[str, bytes, str]  # (filename, data, content type)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
_EXTENSION = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
}
_PILLOW_HINT = "install Pillow (pip install 'adaptformer-client[images]') or pass the image as a path or bytes"


def sniff_content_type(data: bytes) -> str:
    """The image/* type of encoded image bytes from their first bytes; ``application/octet-stream`` if unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"


def _is_pil_image(obj: Any) -> TypeGuard[Image.Image]:
    # Only an already imported Pillow can have made this object, so there is no need to import it here.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(obj, pil.Image)


def _is_ndarray(obj: Any) -> TypeGuard[np.ndarray]:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"encoding an array as an image needs Pillow: {_PILLOW_HINT}") from None
    return Image


def _png(img: Image.Image) -> bytes:
    if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype.name != "uint8":
        raise TypeError(f"an image array must be uint8 (0..255), got {array.dtype}; convert it with .astype('uint8')")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise TypeError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {tuple(array.shape)}")
    # uint8 HxW, HxWx3 and HxWx4 arrays map to L, RGB and RGBA images.
    return _pillow().fromarray(array.copy(order="C"))


def encode_image(image: ImageInput, name: str = "image") -> EncodedImage:
    """Encodes one image for upload: files and bytes are sent as they are, PIL images and arrays as PNG.

    Args:
        image: A path, encoded image bytes, a binary file object, a PIL image or a uint8 array (HxW, HxWx3, HxWx4).
        name: File name to send when the input has none.

    Raises:
        TypeError: the input is none of the above, or an array of the wrong dtype or shape.
        ImportError: an array was given and Pillow is not installed.
        OSError: a path that cannot be read.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        data = path.read_bytes()
        return path.name, data, sniff_content_type(data)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        content_type = sniff_content_type(data)
        return f"{name}.{_EXTENSION.get(content_type, 'bin')}", data, content_type
    if _is_pil_image(image):
        return f"{name}.png", _png(image), "image/png"
    if _is_ndarray(image):
        return f"{name}.png", _png(_array_to_pil(image)), "image/png"
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("the file object must be opened in binary mode ('rb')")
        file_name = getattr(image, "name", None)
        content_type = sniff_content_type(data)
        if isinstance(file_name, str) and file_name:
            return Path(file_name).name, data, content_type
        return f"{name}.{_EXTENSION.get(content_type, 'bin')}", data, content_type
    raise TypeError(
        f"cannot send a {type(image).__name__} as an image: pass a path, bytes, a binary file object, "
        "a PIL image or a uint8 numpy array"
    )


def encode_clip(clip: ImageInput | Sequence[ImageInput]) -> tuple[str, list[EncodedImage]]:
    """Encodes a clip as the form field to send and its parts.

    A list of frames, a TxHxW(xC) array or an animated PIL image become ordered ``frame`` parts; anything else
    (a path, bytes or file of an animated GIF/WebP) is one ``image`` part the server splits into frames.
    """
    frames: list[Any]
    if isinstance(clip, (list, tuple)) or (_is_ndarray(clip) and clip.ndim == 4):
        frames = list(clip)
    elif _is_pil_image(clip) and getattr(clip, "n_frames", 1) > 1:
        from PIL import ImageSequence

        frames = [frame.copy() for frame in ImageSequence.Iterator(clip)]
    else:
        return "image", [encode_image(cast(ImageInput, clip), "clip")]
    return "frame", [encode_image(frame, f"frame{i:04d}") for i, frame in enumerate(frames)]
