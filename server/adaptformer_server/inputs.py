"""Reading a /predict request body (multipart fields or a raw image) and decoding it into model inputs.

Decoding goes through ``adaptformer.data.decode`` (pixel and frame limits) and ``adaptformer.preprocess``
(the same resize and normalisation as training), so the served tensors are the trained ones.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import torch
from fastapi import Request
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartParser

from adaptformer.data.decode import IMAGE_FORMATS, open_clip, open_image
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec, preprocess_clip, preprocess_image
from adaptformer_server.errors import ApiError, InvalidInput, PayloadTooLarge, UnsupportedMediaType, data_error
from adaptformer_server.settings import Settings

__all__ = [
    "IMAGE_TYPES",
    "PixelBudget",
    "PredictBody",
    "decode_inputs",
    "media_type",
    "read_form",
    "read_predict_body",
]

IMAGE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/webp",
        "image/gif",
        "image/bmp",
        "image/x-ms-bmp",
        "image/x-bmp",
        "image/tiff",
    }
)
_HOW = (
    "send multipart/form-data with `image` file fields (curl -F image=@photo.png), repeated `frame` fields for "
    "a clip, or a raw body with Content-Type image/png, image/jpeg, image/webp, image/gif, image/bmp or image/tiff"
)


@dataclass
class PredictBody:
    """The encoded payloads of one request: ``image`` fields (or the raw body) and ``frame`` fields."""

    images: list[bytes] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_form(request: Request, max_parts: int) -> FormData:
    """Parses a multipart body with a bound on the number of parts (starlette's errors reach our handler)."""
    parser = MultiPartParser(
        request.headers, request.stream(), max_files=max_parts, max_fields=max_parts, max_part_size=64 * 1024
    )
    form = await parser.parse()
    if len(form.multi_items()) > max_parts:
        await form.close()
        raise PayloadTooLarge(f"the request has {len(form.multi_items())} multipart parts; the limit is {max_parts}")
    return form


async def read_predict_body(request: Request, settings: Settings) -> PredictBody:
    """Reads the encoded images of a /predict request, enforcing the count limits."""
    mime = media_type(request)
    body = PredictBody()
    if mime == "multipart/form-data":
        form = await read_form(request, settings.max_parts)
        try:
            for name, value in form.multi_items():
                if name not in ("image", "frame"):
                    continue
                if not isinstance(value, UploadFile):
                    raise InvalidInput(
                        f"field {name!r} must be a file part with a filename (curl -F {name}=@photo.png)"
                    )
                target = body.images if name == "image" else body.frames
                target.append(await value.read())
                if len(body.images) > settings.max_images_per_request:
                    raise PayloadTooLarge(
                        f"more than {settings.max_images_per_request} images in one request; split it into several"
                    )
                if len(body.frames) > settings.max_frames:
                    raise PayloadTooLarge(f"more than {settings.max_frames} frames in one clip")
        finally:
            await form.close()
        if not body.images and not body.frames:
            raise InvalidInput(f"no `image` or `frame` field in the request; {_HOW}")
        if body.images and body.frames:
            raise InvalidInput("send either `image` fields (images, or one animated clip) or `frame` fields, not both")
        return body
    if mime in IMAGE_TYPES:
        data = await request.body()
        if not data:
            raise InvalidInput(f"the request body is empty; {_HOW}")
        body.images.append(data)
        return body
    if not mime:
        raise UnsupportedMediaType(f"the request has no Content-Type; {_HOW}")
    raise UnsupportedMediaType(f"Content-Type {mime!r} is not accepted by /predict; {_HOW}")


class PixelBudget:
    """The pixels one request may decode (``max_request_pixels``), across all its images, frames and clips."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, pixels: int) -> None:
        self.used += pixels
        if self.used > self.limit:
            raise PayloadTooLarge(
                f"the images of this request have more than {self.limit:,} pixels in all; send fewer or smaller images"
            )


def _declared_pixels(data: bytes) -> int:
    """Width x height from the image header, without decoding (0 when unreadable: decoding then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as probe:
                w, h = probe.size
                return w * h if w * h <= 1 << 62 else 1 << 62
    except Exception:
        return 0


def _open(data: bytes, settings: Settings, budget: PixelBudget, what: str) -> Image.Image:
    declared = _declared_pixels(data)
    if declared <= settings.max_image_pixels:
        budget.take(declared)  # before decoding: a request over its pixel budget decodes nothing more
    try:
        img = open_image(data, max_pixels=settings.max_image_pixels)
    except DataError as e:
        raise data_error(e, what) from None
    except Exception as e:  # a decoder failing on crafted bytes (struct.error, IndexError...): the input's fault
        raise _undecodable(what, e) from None
    if declared != img.size[0] * img.size[1]:
        budget.take(img.size[0] * img.size[1] - declared)
    return img


def _open_clip(data: bytes, settings: Settings, budget: PixelBudget) -> list[Image.Image]:
    # Every frame (GIF frames and TIFF pages have sizes of their own) is checked against max_image_pixels and
    # taken from the request's budget before it is decoded.
    try:
        return open_clip(
            data,
            max_frames=settings.max_frames,
            max_pixels=settings.max_image_pixels,
            max_total_pixels=settings.max_request_pixels,
            on_frame=lambda w, h: budget.take(w * h),
        )
    except ApiError:
        raise
    except DataError as e:
        raise data_error(e, "clip: ") from None
    except Exception as e:
        raise _undecodable("clip: ", e) from None


def _undecodable(what: str, e: Exception) -> InvalidInput:
    return InvalidInput(
        f"{what}cannot decode the image ({type(e).__name__}: {e}); send a PNG, JPEG, WebP, GIF, BMP or TIFF image"
    )


def _preprocess(img: Image.Image, spec: InputSpec, what: str) -> torch.Tensor:
    try:
        return preprocess_image(img, spec)
    except Exception as e:  # OSError, ValueError, and whatever a decoder raises while loading lazily
        raise InvalidInput(f"{what}cannot convert the image (mode {img.mode}) to RGB: {e}") from None


def decode_inputs(
    body: PredictBody, spec: InputSpec, task: str, settings: Settings, budget: PixelBudget | None = None
) -> list[torch.Tensor]:
    """Decodes and preprocesses a request for a task: one tensor per image, or one clip tensor.

    Blocking (image decoding): call it in a worker thread.

    Args:
        budget: The request's pixel budget, when it decodes several bodies (an OIP tensor of several clips);
            a new one of ``max_request_pixels`` by default.
    """
    budget = PixelBudget(settings.max_request_pixels) if budget is None else budget
    if spec.modality == "image":
        if body.frames:
            raise InvalidInput(
                f"task {task!r} is an image task; send images in `image` fields (`frame` fields make a clip, "
                "for clip tasks)"
            )
        many = len(body.images) > 1
        out = []
        for i, data in enumerate(body.images):
            what = f"image {i + 1}: " if many else ""
            out.append(_preprocess(_open(data, settings, budget, what), spec, what))
        return out
    if body.frames:
        frames = [_open(d, settings, budget, f"frame {i + 1}: ") for i, d in enumerate(body.frames)]
    elif len(body.images) == 1:
        frames = _open_clip(body.images[0], settings, budget)
    else:
        raise InvalidInput(
            f"task {task!r} is a clip task and takes one clip per request: {spec.frames} `frame` fields in order, "
            f"or one animated GIF/WebP in `image`; got {len(body.images)} `image` fields"
        )
    if len(frames) != spec.frames:
        raise InvalidInput(
            f"task {task!r} is a clip task that expects clips of {spec.frames} frames, got {len(frames)}; send "
            f"{spec.frames} `frame` fields or an animated GIF/WebP of {spec.frames} frames"
        )
    try:
        return [preprocess_clip(frames, spec)]
    except Exception as e:
        raise InvalidInput(f"cannot convert the clip frames to RGB: {e}") from None
