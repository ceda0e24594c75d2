"""The request path's fast parts: the tensor decode path against PIL, the limits on every path, one decode and one
pixel budget per request, batches that fill while one runs, and the HTTP protocol's header deadline."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.data.decode import open_image
from adaptformer.preprocess import InputSpec, preprocess_image
from adaptformer_server import fast_decode
from adaptformer_server.app import create_app
from adaptformer_server.errors import InvalidInput, PayloadTooLarge
from adaptformer_server.inputs import Decoder, PredictBody, decode_inputs
from adaptformer_server.settings import Settings
from tests.support import gif, held_request, hold_forward_pass, image_files, png, serving, tensor_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io's notice about torchcodec


def photo(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Gradients and noise: smooth areas and edges, as in a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.float64)
    arr += rng.normal(0, 20, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert(mode)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def fast_settings(**kw: object) -> Settings:
    return Settings(fast_decode="on", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(
    ("size", "side", "interpolation"),
    [
        ((1024, 768), 224, "bicubic"),
        ((20, 20), 32, "bicubic"),
        ((640, 480), 224, "bilinear"),
        ((300, 200), 32, "nearest"),
    ],
)
def test_tensor_path_equals_pil_within_tolerance(fmt, mode, size, side, interpolation):
    """The stated tolerance: at most 4/255 per value, 3/255 at the 99.9th percentile, 0.3/255 on average."""
    data = encode(photo(*size, mode=mode), fmt)
    spec = InputSpec(size=side, interpolation=interpolation)
    probe = fast_decode.probe(data)
    assert probe.fast and (probe.width, probe.height) == size
    want = preprocess_image(open_image(data), spec)
    got = fast_decode.preprocess_batch(fast_decode.decode_uint8([(data, probe)]), spec)[0]
    assert got.shape == want.shape and got.dtype == torch.float32
    diff = ((got - want) * torch.tensor(spec.std).view(3, 1, 1) * 255).abs()
    assert diff.max() <= 4.0 + 1e-3
    assert diff.flatten().quantile(0.999) <= 3.0 + 1e-3
    assert diff.mean() <= 0.3


def test_images_of_one_size_are_resized_together_and_kept_in_order():
    datas = [encode(photo(64, 48, seed=i), "PNG") for i in range(3)] + [encode(photo(50, 50), "PNG")]
    spec = InputSpec(size=32)
    decoded = fast_decode.decode_uint8([(d, fast_decode.probe(d)) for d in datas])
    batch = fast_decode.preprocess_batch(decoded, spec)
    for d, x in zip(datas, batch, strict=True):
        alone = fast_decode.preprocess_batch(fast_decode.decode_uint8([(d, fast_decode.probe(d))]), spec)[0]
        assert torch.equal(x, alone)


@pytest.mark.parametrize(
    "data",
    [
        encode(photo(32, 32, "CMYK"), "JPEG"),
        encode(photo(32, 32, "P"), "PNG"),
        encode(photo(32, 32, "RGBA"), "PNG"),
        encode(photo(32, 32, "I;16"), "PNG"),
        encode(
            photo(32, 32),
            "JPEG",
            exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00",
        ),
        encode(photo(32, 32), "WEBP"),
        encode(photo(32, 32), "GIF"),
    ],
    ids=["cmyk-jpeg", "palette-png", "rgba-png", "16-bit-png", "rotated-jpeg", "webp", "gif"],
)
def test_what_the_tensor_path_does_not_take_goes_to_pil(data: bytes):
    probe = fast_decode.probe(data)
    assert probe.format is not None and not probe.fast
    spec = InputSpec(size=32)
    got = decode_inputs(PredictBody(images=[data]), spec, "t", fast_settings())
    assert torch.equal(got[0], preprocess_image(open_image(data), spec))


def test_exif_rotation_is_applied_on_the_tensor_settings():
    # orientation 6: stored sideways, shown rotated 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo(40, 20), "JPEG", exif=exif.tobytes())
    (x,) = decode_inputs(PredictBody(images=[data]), InputSpec(size=32), "t", fast_settings())
    assert torch.equal(x, preprocess_image(open_image(data), InputSpec(size=32)))


def test_image_over_the_pixel_limit_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch):
    def never(*a: object, **k: object) -> None:
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(fast_decode, "decode_uint8", never)
    big = encode(Image.new("RGB", (3000, 3000)), "JPEG")
    with pytest.raises(PayloadTooLarge):  # not for the tensor path; PIL checks the header's size first
        decode_inputs(PredictBody(images=[big]), InputSpec(size=32), "t", fast_settings(max_image_pixels=1_000_000))
    monkeypatch.setattr("adaptformer_server.inputs.open_image", never)
    # the request's budget: three images of 0.5 MP each against 1.2 MP in all, refused before the first decodes
    images = [encode(Image.new("RGB", (1000, 500)), "PNG") for _ in range(3)]
    settings = fast_settings(max_request_pixels=1_200_000)
    with pytest.raises(PayloadTooLarge):
        decode_inputs(PredictBody(images=images), InputSpec(size=32), "t", settings)


def test_truncated_jpeg_gets_the_pil_answer():
    data = encode(photo(64, 64), "JPEG")
    with pytest.raises(InvalidInput):
        decode_inputs(PredictBody(images=[data[: len(data) // 2]]), InputSpec(size=32), "t", fast_settings())


@pytest.mark.parametrize("fast", ["on", "off"])
def test_one_decode_and_one_budget_per_request(fast: str, monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = Decoder._pil

    def counting(self: Decoder, data: bytes, what: str) -> Image.Image:
        calls.append(what)
        return real(self, data, what)

    monkeypatch.setattr(Decoder, "_pil", counting)
    images = [png(i, (100, 100)) for i in range(2)]  # 20,000 pixels in all
    body = PredictBody(images=images)
    settings = Settings(fast_decode=fast, max_request_pixels=25_000)  # type: ignore[arg-type]
    decoder = Decoder(settings)
    a = decode_inputs(body, InputSpec(size=32), "a", settings, decoder=decoder)
    b = decode_inputs(body, InputSpec(size=16, mean=(0.5, 0.5, 0.5)), "b", settings, decoder=decoder)
    assert len(a) == len(b) == 2 and b[0].shape == (3, 16, 16)
    assert decoder.budget.used == 20_000  # counted once, whatever the number of specs
    assert len(calls) == (0 if fast == "on" else 2)
    with pytest.raises(PayloadTooLarge):  # the same decoder (one request) has 5,000 pixels left
        decode_inputs(PredictBody(images=[png(3, (100, 100))]), InputSpec(size=32), "c", settings, decoder=decoder)


def test_only_small_stills_decode_on_the_event_loop():
    settings = Settings()
    small = Decoder(settings).declared_pixels(PredictBody(images=[png(0, (40, 40)), png(1, (40, 40))]))
    assert small == 3200 <= settings.inline_decode_pixels
    assert Decoder(settings).declared_pixels(PredictBody(images=[png(0, (200, 200))])) > settings.inline_decode_pixels
    # an animation's header tells one frame's size; decoding it is every frame: never on the event loop
    assert Decoder(settings).declared_pixels(PredictBody(images=[gif(4)])) > settings.inline_decode_pixels


async def test_samples_arriving_while_a_batch_runs_fill_the_next_one(vit, tasks_store, make_settings):
    app = create_app(make_settings(max_batch_size=8, max_wait_ms=0), backbone=vit)
    async with serving(app) as client:
        batcher = app.state.inference.batcher
        first, gate = await held_request(app, client, "/predict?task=alpha", files=image_files(png(0)))
        rest = [asyncio.create_task(client.post("/predict?task=beta", files=image_files(png(i)))) for i in range(5)]

        async def all_queued() -> None:
            while batcher.depth < 5:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(all_queued(), 30)
        gate.set()
        responses = [await first, *[await r for r in rest]]
        assert [r.status_code for r in responses] == [200] * 6
        # max_wait 0, yet the five that came while the first batch ran share one pass: a partial batch waits for
        # the inference thread rather than queueing behind it
        assert list(batcher.recent_batch_sizes) == [1, 5]


async def test_a_full_batch_waits_stacked_behind_the_running_one(vit, tasks_store, make_settings):
    app = create_app(make_settings(max_batch_size=2, max_wait_ms=30_000, queue_size=6), backbone=vit)
    async with serving(app) as client:
        batcher = app.state.inference.batcher
        started, gate = hold_forward_pass(batcher)
        posts = [asyncio.create_task(client.post("/predict?task=alpha", files=image_files(png(i)))) for i in range(6)]
        assert await asyncio.to_thread(started.wait, 60)

        async def settled() -> None:
            while batcher.depth < 4:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), 30)
        # 2 running, 2 handed over (stacked, waiting behind), 2 queued: the queue limit counts the waiting ones
        assert len(batcher._pending) == 2 and batcher.depth == 4
        r = await client.post("/predict?task=alpha", files=image_files(png(7), png(8), png(9)))
        assert r.status_code == 503  # 4 + 3 > 6
        gate.set()
        assert [(await p).status_code for p in posts] == [200] * 6
        assert list(batcher.recent_batch_sizes) == [2, 2, 2]


async def test_tensor_path_serves_the_same_answer(vit, tasks_store, make_settings):
    data = encode(photo(40, 30), "JPEG")
    answers = {}
    for fast in ("off", "on"):
        app = create_app(make_settings(fast_decode=fast), backbone=vit)
        async with serving(app) as client:
            r = await client.post("/predict?task=alpha&top_k=4", content=data, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200, r.text
            answers[fast] = {p["label"]: p["score"] for p in r.json()["predictions"][0]}
    assert answers["on"].keys() == answers["off"].keys()
    for label, score in answers["off"].items():
        assert answers["on"][label] == pytest.approx(score, abs=0.02)
    assert tensor_of(data, InputSpec(size=32)).shape == (3, 32, 32)


def test_the_header_deadline_rides_on_httptools_when_installed():
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from adaptformer_server.connections import http_protocol

    protocol = http_protocol(5.0)
    assert issubclass(protocol, HttpToolsProtocol)
    for hook in ("connection_made", "on_response_complete", "connection_lost"):
        assert hook in vars(HttpToolsProtocol), f"httptools' protocol has no {hook} of its own to extend"
