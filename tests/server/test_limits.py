"""Every limit of a request in one :class:`Limits` made from the settings: its checks and their messages, and the
multipart forms Starlette parses within it (/predict, POST /adapters), too many parts answered 413."""

from __future__ import annotations

import gc

import httpx
import pytest

from adaptformer.input_spec import InputSpec
from adaptformer_server import create_app
from adaptformer_server.errors import InvalidInput, PayloadTooLarge
from adaptformer_server.limits import Limits
from tests.support import adapter_bytes, image_files, png, serving


def check_error(r: httpx.Response, status: int, code: str, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], (w, err["message"])


def test_limits_are_made_once_per_settings(make_settings):
    settings = make_settings(max_images_per_request=3, max_frames=5, max_parts=7, max_examples=10)
    limits = Limits.of(settings)
    assert Limits.of(settings) is limits
    assert (limits.images, limits.frames, limits.parts, limits.example_parts) == (3, 5, 7, 36)
    other = make_settings(max_images_per_request=4)
    assert Limits.of(other) is not limits and Limits.of(other).images == 4
    del other
    gc.collect()
    assert Limits.of(settings) is limits


def test_each_check_names_its_limit(make_settings):
    limits = Limits.of(make_settings(max_images_per_request=3, max_frames=5, max_image_pixels=100))
    limits.check_images(3)
    with pytest.raises(PayloadTooLarge, match="more than 3 clips in one request; split it into several"):
        limits.check_images(4, "clips")
    limits.check_frames(5)
    with pytest.raises(PayloadTooLarge, match=r"examples: a/b\.gif has 6 frames; the limit is 5 \(max_frames\)"):
        limits.check_frames(6, "examples: a/b.gif")
    with pytest.raises(InvalidInput, match="frames=6 is more than the server's clip limit"):
        limits.check_requested_frames(6)
    limits.check_image_size(10, 10, "x.png")
    with pytest.raises(PayloadTooLarge, match=r"x\.png is 11x10 pixels, more than the limit of 100"):
        limits.check_image_size(11, 10, "x.png")
    budget = limits.budget()
    budget.take(limits.request_pixels)
    with pytest.raises(PayloadTooLarge, match="pixels in all"):
        budget.take(1)


def test_the_json_values_of_an_inference_request_are_bounded_by_its_task(make_settings):
    limits = Limits.of(make_settings(max_images_per_request=2, max_frames=64))
    image, clip = InputSpec(size=28), InputSpec(size=8, modality="clip", frames=4)
    assert limits.json_values(image) == 2 * 3 * 28 * 28 + 1024
    assert limits.json_values(clip) == 2 * 4 * 3 * 8 * 8 + 1024
    limits.check_json_values(limits.json_values(image), image, "t")
    with pytest.raises(PayloadTooLarge, match="JSON values; one for task 't' needs at most 5,728"):
        limits.check_json_values(limits.json_values(image) + 1, image, "t")


async def test_multipart_forms_are_parsed_within_the_limits(vit, tasks_store, make_settings):
    app = create_app(make_settings(max_parts=3, admin_key="root"), backbone=vit)
    admin = {"Authorization": "Bearer root"}
    async with serving(app) as client:
        r = await client.post("/predict?task=alpha", files=image_files(*(png(i) for i in range(3))))
        assert r.status_code == 200, r.text
        r = await client.post("/predict?task=alpha", files=image_files(*(png(i) for i in range(4))))
        check_error(r, 413, "payload_too_large", "Too many files", "too many multipart parts")
        fields = [("note", (None, str(i))) for i in range(4)]
        r = await client.post("/predict?task=alpha", files=image_files(png(1)) + fields)
        check_error(r, 413, "payload_too_large", "Too many fields")
        r = await client.post("/predict?task=alpha", files=image_files(png(1)) + fields[:3])
        check_error(r, 413, "payload_too_large", "the request has 4 multipart parts; the limit is 3")
        r = await client.post("/predict?task=alpha", files=[*image_files(png(1)), ("note", (None, "x" * 70_000))])
        check_error(r, 413, "payload_too_large", "a text field is too long")
        boundary = {"Content-Type": "multipart/form-data"}  # no boundary
        r = await client.post("/predict?task=alpha", content=b"--x\r\n", headers=boundary)
        check_error(r, 400, "invalid_input", "malformed multipart body")

        adapter = ("file", ("a.safetensors", adapter_bytes(vit, "gamma"), "application/octet-stream"))
        r = await client.post("/adapters", files=[adapter, *fields], headers=admin)
        check_error(r, 413, "payload_too_large", "Too many fields")
        assert 'adaptformer_uploads_total{status="413"} 1.0' in (await client.get("/metrics")).text
        r = await client.post("/adapters", files=[adapter], data={"task": "gamma"}, headers=admin)
        assert r.status_code == 201, r.text
