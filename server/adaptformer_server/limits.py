"""What one request may hold: images, frames, pixels, multipart parts, JSON values; one :class:`Limits` made from
the settings, whose checks every route and the decoder call, with one message per limit.

The body's size in bytes is checked before any of these, while it arrives (``body_limit.BodyLimit``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request

from adaptformer.input_spec import InputSpec
from adaptformer_server.errors import InvalidInput, PayloadTooLarge
from adaptformer_server.settings import Settings

__all__ = ["Limits", "PixelBudget"]

_FIELD_BYTES = 64 * 1024  # a text field of a multipart form (files have the body's limit)
_ENVELOPE_VALUES = 1024  # JSON values of an inference request around its tensor (names, shape, parameters)
_made: dict[int, Limits] = {}  # by id() of the settings they were made from, while those live


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


@dataclass(frozen=True)
class Limits:
    """The limits on what one request holds (the settings they come from in brackets).

    Args:
        images: Inputs of one prediction: images, clips or tensor rows (``max_images_per_request``).
        frames: Frames of one clip (``max_frames``).
        image_pixels: Pixels of one image or clip frame (``max_image_pixels``).
        request_pixels: Pixels of every image and frame of one request (``max_request_pixels``).
        parts: Parts of a multipart form, files and fields together (``max_parts``).
        example_parts: Parts of a training job's form: an image and a label field per example (``max_examples``).
        field_bytes: Bytes of one text field of a multipart form.
    """

    images: int
    frames: int
    image_pixels: int
    request_pixels: int
    parts: int
    example_parts: int
    field_bytes: int = _FIELD_BYTES

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits of ``settings``, made once for each settings object."""
        limits = _made.get(id(settings))
        if limits is None:
            limits = _made[id(settings)] = cls(
                images=settings.max_images_per_request,
                frames=settings.max_frames,
                image_pixels=settings.max_image_pixels,
                request_pixels=settings.max_request_pixels,
                parts=settings.max_parts,
                example_parts=2 * settings.max_examples + 16,
            )
            weakref.finalize(settings, _made.pop, id(settings), None)
        return limits

    # -- inputs ---------------------------------------------------------------------------------------------------
    def check_images(self, count: int, kind: str = "images") -> None:
        """413 for more than ``images`` inputs (``kind``: images, clips, inputs) in one request."""
        if count > self.images:
            raise PayloadTooLarge(f"more than {self.images} {kind} in one request; split it into several")

    def check_frames(self, count: int, what: str = "the clip") -> None:
        """413 for a clip (``what``) of more than ``frames`` frames."""
        if count > self.frames:
            raise PayloadTooLarge(f"{what} has {count:,} frames; the limit is {self.frames} (max_frames)")

    def check_requested_frames(self, frames: int) -> None:
        """400 for a clip length asked for (a training job's ``frames``) longer than the server takes."""
        if frames > self.frames:
            raise InvalidInput(f"frames={frames} is more than the server's clip limit ({self.frames})")

    def check_image_size(self, width: int, height: int, what: str) -> None:
        """413 for an image or frame (``what``) of more than ``image_pixels`` pixels, said before it is decoded."""
        if width * height > self.image_pixels:
            raise PayloadTooLarge(
                f"{what} is {width}x{height} pixels, more than the limit of {self.image_pixels:,} "
                "(ADAPTFORMER_MAX_IMAGE_PIXELS)"
            )

    def budget(self) -> PixelBudget:
        """A new request's pixel budget (``request_pixels``)."""
        return PixelBudget(self.request_pixels)

    # -- bodies ---------------------------------------------------------------------------------------------------
    def json_values(self, spec: InputSpec) -> int:
        """The most JSON values an inference request for a task of ``spec`` can need: ``images`` preprocessed
        tensors, or as many encoded images (clips of at most ``frames`` frames each), and the request around them."""
        per_input = 3 * spec.size * spec.size * (spec.frames if spec.modality == "clip" else 1)
        return self.images * max(per_input, self.frames) + _ENVELOPE_VALUES

    def check_json_values(self, count: int, spec: InputSpec, task: str) -> None:
        """413 for an inference request of more JSON values than a request for ``task`` can need, before it is
        parsed (``count``: at most that many values)."""
        most = self.json_values(spec)
        if count > most:
            raise PayloadTooLarge(
                f"the inference request holds about {count:,} JSON values; one for task {task!r} needs at most "
                f"{most:,} (at most {self.images} inputs of {spec.size}x{spec.size} pixels): send fewer inputs, or "
                "send the tensor as binary data"
            )

    async def form(self, request: Request, parts: int | None = None) -> FormData:
        """The request's multipart form, parsed by Starlette within the limits: at most ``parts`` parts (``parts``
        by default), files and fields together, text fields of at most ``field_bytes``. 413 beyond them (Starlette's
        own refusals are answered by ``errors.as_api_error``); the caller closes the form."""
        parts = self.parts if parts is None else parts
        form = await request.form(max_files=parts, max_fields=parts, max_part_size=self.field_bytes)
        count = len(form.multi_items())
        if count > parts:  # Starlette counts files and fields apart
            await form.close()
            raise PayloadTooLarge(f"the request has {count} multipart parts; the limit is {parts}")
        return form
