"""Reading a /predict request body (multipart fields or a raw image) and decoding it into model inputs.

Decoding goes through ``adaptformer.data.decode`` (pixel and frame limits) and ``adaptformer.preprocess``
(the same resize and normalisation as training), so the served tensors are the trained ones; JPEG and PNG stills
take the tensor path of ``fast_decode`` (torchvision, on the GPU where there is one), equal to those within a
stated tolerance. A request's image headers are read and its pixels counted before anything is decoded; every
limit is the settings' :class:`~adaptformer_server.limits.Limits`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile

from adaptformer.data.decode import open_clip, open_image
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec, preprocess_image
from adaptformer_server import fast_decode
from adaptformer_server.errors import ApiError, InvalidInput, UnsupportedMediaType, data_error
from adaptformer_server.limits import Limits, PixelBudget
from adaptformer_server.repository.record import AdapterEntry
from adaptformer_server.settings import Settings

__all__ = [
    "IMAGE_TYPES",
    "Decoder",
    "PredictBody",
    "decode_device",
    "decode_inputs",
    "media_type",
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
T = TypeVar("T")
_HOW = (
    "send multipart/form-data with `image` file fields (curl -F image=@photo.png), repeated `frame` fields for "
    "a clip, or a raw body with Content-Type image/png, image/jpeg, image/webp, image/gif, image/bmp or image/tiff"
)


@dataclass
class PredictBody:
    """The encoded payloads of one request: ``image`` fields (or the raw body) and ``frame`` fields."""

    images: list[bytes] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)

    def pixels(self, decoder: Decoder) -> int:
        """What decoding the body will cost, as its image headers declare it (:meth:`Decoder.declared_pixels`)."""
        return decoder.declared_pixels(self)

    def decode(self, entries: Sequence[AdapterEntry], decoder: Decoder) -> list[list[torch.Tensor]]:
        """Decodes the images once, preprocesses them once per distinct input spec and gives each entry its
        inputs; one pixel budget (the decoder's) for the whole request (blocking: see :meth:`Decoder.run`)."""
        done: list[tuple[InputSpec, list[torch.Tensor]]] = []
        out = []
        for entry in entries:
            spec = entry.spec
            inputs = next((x for s, x in done if s == spec), None)
            if inputs is None:
                inputs = decode_inputs(self, spec, entry.task, decoder.settings, decoder=decoder)
                done.append((spec, inputs))
            out.append(inputs)
        return out


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_predict_body(request: Request, limits: Limits) -> PredictBody:
    """Reads the encoded images of a /predict request within ``limits`` (parts, images, frames)."""
    mime = media_type(request)
    body = PredictBody()
    if mime == "multipart/form-data":
        form = await limits.form(request)
        try:
            files: list[tuple[str, UploadFile]] = []
            for name, value in form.multi_items():
                if name not in ("image", "frame"):
                    continue
                if not isinstance(value, UploadFile):
                    raise InvalidInput(
                        f"field {name!r} must be a file part with a filename (curl -F {name}=@photo.png)"
                    )
                files.append((name, value))
            limits.check_images(sum(name == "image" for name, _ in files))
            limits.check_frames(sum(name == "frame" for name, _ in files))
            for name, file in files:
                (body.images if name == "image" else body.frames).append(await file.read())
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


class Decoder:
    """Decodes the images of one request, each once whatever the number of specs it is preprocessed for.

    Every image's header is read first and its pixels taken from the request's budget before any image is
    decoded. JPEG and PNG stills the tensor path takes (``fast_decode``) are decoded together by torchvision, on
    ``device`` when it is a CUDA device; everything else, and anything the tensor path fails on, by PIL.

    Args:
        settings: The limits (:class:`~adaptformer_server.limits.Limits` of them: pixels per image and per request)
            and ``fast_decode`` (``auto``: the tensor path only with a ``device``).
        budget: The request's pixel budget (a new one of ``max_request_pixels`` by default).
        device: Where the tensor path decodes and preprocesses (``None``: the CPU).
    """

    def __init__(self, settings: Settings, budget: PixelBudget | None = None, device: torch.device | None = None):
        self.settings = settings
        self.limits = Limits.of(settings)
        self.budget = self.limits.budget() if budget is None else budget
        self.device = device
        on = settings.fast_decode == "on" or (settings.fast_decode == "auto" and device is not None)
        self.fast = on and fast_decode.available()
        self._probes: dict[int, fast_decode.Probe] = {}
        self._stills: dict[int, Image.Image | torch.Tensor] = {}
        self._keep: list[bytes] = []  # the cache is keyed by id(): hold the bytes

    def probe(self, data: bytes) -> fast_decode.Probe:
        key = id(data)
        if key not in self._probes:
            self._probes[key] = fast_decode.probe(data)
            self._keep.append(data)
        return self._probes[key]

    def declared_pixels(self, body: PredictBody) -> int:
        """Pixels the headers of the body's images declare (what decoding it will cost, roughly); an animation
        counts as more than ``inline_decode_pixels`` whatever its size, so it never decodes on the event loop."""
        total = 0
        for d in (*body.images, *body.frames):
            p = self.probe(d)
            total += max(p.pixels, self.settings.inline_decode_pixels + 1) if p.animated else p.pixels
        return total

    async def run(self, fn: Callable[..., T], *args: object, pixels: int) -> T:
        """``fn(*args)`` on the event loop when the request is small (``inline_decode_pixels``: a hand-off to a
        thread costs more than decoding a thumbnail), otherwise on the decode threads."""
        if pixels <= self.settings.inline_decode_pixels:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(_executor(self.settings), fn, *args)

    def stills(self, datas: Sequence[bytes], whats: Sequence[str]) -> list[Image.Image | torch.Tensor]:
        """The decoded images (a PIL image or a uint8 RGB tensor [3, H, W] each), from the cache when decoded."""
        todo = [i for i, d in enumerate(datas) if id(d) not in self._stills]
        limit = self.limits.image_pixels
        for i in todo:  # the whole request's pixels are taken before anything is decoded
            declared = self.probe(datas[i]).pixels
            if declared <= limit:
                self.budget.take(declared)
        fast = [i for i in todo if self.fast and self._probes[id(datas[i])].fast]
        fast = [i for i in fast if 0 < self._probes[id(datas[i])].pixels <= limit]
        if fast:
            decoded: Sequence[torch.Tensor | None]
            try:
                decoded = fast_decode.decode_uint8([(datas[i], self._probes[id(datas[i])]) for i in fast], self.device)
            except Exception:  # one of them failed: decode them one by one, PIL says why for the bad one
                decoded = [self._fast_one(datas[i]) for i in fast]
            for i, x in zip(fast, decoded, strict=True):
                if x is not None:
                    self._stills[id(datas[i])] = x
        for i in todo:
            if id(datas[i]) not in self._stills:
                self._stills[id(datas[i])] = self._pil(datas[i], whats[i])
        return [self._stills[id(d)] for d in datas]

    def _fast_one(self, data: bytes) -> torch.Tensor | None:
        try:
            return fast_decode.decode_uint8([(data, self._probes[id(data)])], self.device)[0]
        except Exception:
            return None

    def _pil(self, data: bytes, what: str) -> Image.Image:
        declared = self.probe(data).pixels
        try:
            img = open_image(data, max_pixels=self.limits.image_pixels)
        except DataError as e:
            raise data_error(e, what) from None
        except Exception as e:  # a decoder failing on crafted bytes (struct.error, IndexError...): the input's fault
            raise _undecodable(what, e) from None
        if declared != img.size[0] * img.size[1]:
            self.budget.take(img.size[0] * img.size[1] - declared)
        return img

    def preprocess(
        self, stills: Sequence[Image.Image | torch.Tensor], spec: InputSpec, whats: Sequence[str]
    ) -> list[torch.Tensor]:
        """Normalised float32 tensors [3, S, S] for ``spec``; tensor-path images are preprocessed together."""
        out: list[torch.Tensor | None] = [None] * len(stills)
        tensors = [(i, still) for i, still in enumerate(stills) if isinstance(still, torch.Tensor)]
        if tensors:
            batch = fast_decode.preprocess_batch([still for _, still in tensors], spec)
            for (i, _), x in zip(tensors, batch, strict=True):
                out[i] = x
        for i, still in enumerate(stills):
            if not isinstance(still, torch.Tensor):
                out[i] = _preprocess(still, spec, whats[i])
        return out  # type: ignore[return-value]


def decode_device(settings: Settings, model_device: torch.device | None) -> torch.device | None:
    """Where the tensor path works for a server whose model runs on ``model_device``: that GPU when it is a CUDA
    device and ``device_decode`` is on, else the CPU (``None``)."""
    if settings.device_decode and model_device is not None and model_device.type == "cuda":
        return model_device
    return None


_executors: dict[int, ThreadPoolExecutor] = {}


def _executor(settings: Settings) -> ThreadPoolExecutor:
    """The decode threads (one pool per thread count, shared by the apps of a process)."""
    n = settings.decode_threads or min(8, os.cpu_count() or 1)
    if n not in _executors:
        _executors[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="adaptformer-decode")
    return _executors[n]


def _open_clip(data: bytes, limits: Limits, budget: PixelBudget) -> list[Image.Image]:
    # Every frame (GIF frames and TIFF pages have sizes of their own) is checked against the pixels of one image and
    # taken from the request's budget before it is decoded.
    try:
        return open_clip(
            data,
            max_frames=limits.frames,
            max_pixels=limits.image_pixels,
            max_total_pixels=limits.request_pixels,
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
    body: PredictBody,
    spec: InputSpec,
    task: str,
    settings: Settings,
    budget: PixelBudget | None = None,
    *,
    decoder: Decoder | None = None,
) -> list[torch.Tensor]:
    """Decodes and preprocesses a request for a task: one tensor per image, or one clip tensor.

    Blocking (image decoding): run it with :meth:`Decoder.run` (a worker thread unless the request is tiny).

    Args:
        budget: The request's pixel budget, when it decodes several bodies (an OIP tensor of several clips);
            a new one of ``max_request_pixels`` by default. Ignored when ``decoder`` is given (it has its own).
        decoder: The request's decoder, when the body is decoded for several specs (each image decoded once).
    """
    decoder = Decoder(settings, budget) if decoder is None else decoder
    if spec.modality == "image":
        if body.frames:
            raise InvalidInput(
                f"task {task!r} is an image task; send images in `image` fields (`frame` fields make a clip, "
                "for clip tasks)"
            )
        many = len(body.images) > 1
        whats = [f"image {i + 1}: " if many else "" for i in range(len(body.images))]
        return decoder.preprocess(decoder.stills(body.images, whats), spec, whats)
    if body.frames:
        whats = [f"frame {i + 1}: " for i in range(len(body.frames))]
        frames: list[Image.Image | torch.Tensor] = decoder.stills(body.frames, whats)
    elif len(body.images) == 1:
        frames = list(_open_clip(body.images[0], decoder.limits, decoder.budget))
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
        return [torch.stack(decoder.preprocess(frames, spec, [""] * len(frames)))]
    except Exception as e:
        raise InvalidInput(f"cannot convert the clip frames to RGB: {e}") from None
