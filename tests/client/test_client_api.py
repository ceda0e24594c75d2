"""Every client method, through Client and AsyncClient, against the fake server."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptformer_client import (
    AdapterInfo,
    AsyncClient,
    Client,
    DeleteResult,
    Health,
    NotFoundError,
    PredictResponse,
    Ready,
    UploadResult,
)
from tests.support import png

# A one-colour PNG (red, 8x6 unless told): the fake server's answer depends on its size in bytes.
solid = functools.partial(png, color=(255, 0, 0), size=(8, 6))


def gif(frames: int = 4) -> bytes:
    images = [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


async def test_predict_path_sends_one_image_part_with_query(call, fake, tmp_path: Path) -> None:
    path = tmp_path / "seven.png"
    path.write_bytes(solid())

    answer = await call("predict", "digits", path, top_k=3)

    assert isinstance(answer, PredictResponse)
    assert (answer.task, answer.modality, answer.latency_ms) == ("digits", "image", 12.5)
    assert len(answer.predictions) == 1 and len(answer.predictions[0]) == 3
    assert answer.top == answer.predictions[0][0]
    assert answer.top.label == str(len(solid()) % 10) and answer.top.score == 0.9
    request = fake.requests[-1]
    assert request.method == "POST" and request.url.path == "/predict"
    assert dict(request.url.params) == {"task": "digits", "top_k": "3"}
    assert request.headers["authorization"] == "Bearer k"
    assert fake.parts == [("image", "seven.png", "image/png", solid())]


async def test_predict_without_top_k_leaves_the_server_default(call, fake) -> None:
    answer = await call("predict", "digits", solid())
    assert "top_k" not in fake.requests[-1].url.params
    assert len(answer.predictions[0]) == 5


@pytest.mark.parametrize("kind", ["str path", "bytes", "bytearray", "file object", "nameless file"])
async def test_predict_accepts_paths_bytes_and_files(call, fake, tmp_path: Path, kind: str) -> None:
    data = solid(color=(0, 255, 0))
    path = tmp_path / "green.png"
    path.write_bytes(data)
    image = {
        "str path": str(path),
        "bytes": data,
        "bytearray": bytearray(data),
        "file object": io.BytesIO(data),
        "nameless file": io.BytesIO(data),
    }[kind]
    if kind == "file object":
        image.name = str(path)  # as a file opened with open(path, "rb") has

    await call("predict", "digits", image)

    [(field, filename, content_type, sent)] = fake.parts
    assert (field, content_type, sent) == ("image", "image/png", data)
    assert filename == ("green.png" if kind in ("str path", "file object") else "image.png")


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.full((6, 8), 7, np.uint8), "L"),
        (np.full((6, 8, 1), 7, np.uint8), "L"),
        (np.full((6, 8, 3), 7, np.uint8), "RGB"),
        (np.full((6, 8, 4), 7, np.uint8), "RGBA"),
    ],
)
async def test_predict_encodes_numpy_arrays_as_png(call, fake, array: np.ndarray, mode: str) -> None:
    await call("predict", "digits", array)
    [(_, filename, content_type, data)] = fake.parts
    assert (filename, content_type) == ("image.png", "image/png")
    img = decoded(data)
    assert (img.format, img.mode, img.size) == ("PNG", mode, (8, 6))
    assert np.array_equal(np.asarray(img), array.squeeze())


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "F"])
async def test_predict_encodes_pil_images_as_png(call, fake, mode: str) -> None:
    await call("predict", "digits", Image.new(mode, (5, 4)))
    [(_, filename, content_type, data)] = fake.parts
    assert (filename, content_type) == ("image.png", "image/png")
    assert decoded(data).size == (5, 4)


async def test_predict_batch_answers_each_image_in_order(call, fake) -> None:
    images = [solid(size=(8, 6)), solid(size=(9, 9)), np.zeros((4, 4, 3), np.uint8)]

    answer = await call("predict_batch", "digits", images, top_k=2)

    assert [field for field, *_ in fake.parts] == ["image"] * 3
    assert [filename for _, filename, *_ in fake.parts] == ["image0000.png", "image0001.png", "image0002.png"]
    assert fake.parts[0][3] == images[0] and fake.parts[1][3] == images[1]
    sizes = [len(data) for *_, data in fake.parts]
    assert [p.label for p in answer.tops] == [str(n % 10) for n in sizes]
    assert all(len(p) == 2 for p in answer.predictions)
    with pytest.raises(ValueError, match="3 inputs"):
        _ = answer.top


async def test_predict_clip_sends_frames_in_order(call, fake) -> None:
    frames = [solid(color=(i * 50, 0, 0)) for i in range(4)]

    answer = await call("predict_clip", "motion", frames, top_k=1)

    assert [(field, data) for field, _, _, data in fake.parts] == [("frame", f) for f in frames]
    assert answer.modality == "clip" and len(answer.predictions) == 1
    assert answer.top.label == ["wave", "jump", "sit"][sum(map(len, frames)) % 3]


async def test_predict_clip_sends_an_animated_gif_as_one_image(call, fake, tmp_path: Path) -> None:
    path = tmp_path / "wave.gif"
    path.write_bytes(gif())

    answer = await call("predict_clip", "motion", path)

    assert fake.parts == [("image", "wave.gif", "image/gif", gif())]
    assert answer.top.label == ["wave", "jump", "sit"][len(gif()) % 3]


async def test_predict_clip_splits_arrays_and_animated_pil_images_into_frames(call, fake) -> None:
    clip = np.stack([np.full((6, 8, 3), i, np.uint8) for i in range(4)])
    await call("predict_clip", "motion", clip)
    assert [decoded(data).getpixel((0, 0)) for *_, data in fake.parts] == [(i, i, i) for i in range(4)]

    await call("predict_clip", "motion", Image.open(io.BytesIO(gif(4))))
    assert [field for field, *_ in fake.parts] == ["frame"] * 4
    assert [decoded(data).convert("RGB").getpixel((0, 0))[0] for *_, data in fake.parts] == [0, 60, 120, 180]


async def test_list_and_get_adapters(call, fake) -> None:
    adapters = await call("list_adapters")
    assert [a.task for a in adapters] == ["digits", "motion"]
    assert all(isinstance(a, AdapterInfo) for a in adapters)

    motion = await call("get_adapter", "motion")
    assert motion == adapters[1]
    assert (motion.modality, motion.frames, motion.labels, motion.resident) == (
        "clip",
        4,
        ["wave", "jump", "sit"],
        True,
    )
    assert fake.requests[-1].url.path == "/adapters/motion"


async def test_task_names_are_escaped_in_paths(call, fake) -> None:
    with pytest.raises(NotFoundError, match="no task"):
        await call("get_adapter", "../admin")
    assert fake.requests[-1].url.raw_path == b"/adapters/..%2Fadmin"


async def test_upload_adapter_from_path_bytes_and_file(call, fake, tmp_path: Path) -> None:
    path = tmp_path / "cars.safetensors"
    path.write_bytes(b"weights-1")

    first = await call("upload_adapter", path, task="cars")
    assert isinstance(first, UploadResult)
    assert (first.adapter.task, first.replaced, first.previous_version) == ("cars", False, None)
    assert sorted(fake.parts) == [
        ("file", "cars.safetensors", "application/octet-stream", b"weights-1"),
        ("task", None, "text/plain", b"cars"),
    ]

    second = await call("upload_adapter", b"weights-2", task="cars")
    assert second.replaced and second.previous_version == first.adapter.version
    assert second.adapter.version != first.adapter.version
    assert [filename for field, filename, *_ in fake.parts if field == "file"] == ["adapter.safetensors"]

    third = await call("upload_adapter", io.BytesIO(b"weights-3"))
    assert third.adapter.task == "uploaded"
    assert [field for field, *_ in fake.parts] == ["file"]


async def test_delete_adapter(call, fake) -> None:
    version = fake.adapters["digits"]["version"]
    result = await call("delete_adapter", "digits")
    assert result == DeleteResult(task="digits", deleted=True, version=version)
    assert fake.requests[-1].method == "DELETE"
    assert "digits" not in fake.adapters


async def test_health_ready_and_metrics(call, fake) -> None:
    assert await call("health") == Health(status="ok")
    ready = await call("ready")
    assert ready.is_ready and (ready.backbone, ready.adapters) == ("embedded-vit", 2)

    fake.ready = False
    loading = await call("ready")
    assert loading == Ready(status="loading") and not loading.is_ready
    assert len(fake.requests) == 3  # "loading" is an answer, not retried

    assert "requests_total 3" in await call("metrics")


async def test_sync_and_async_clients_give_the_same_answers(fake, make_client, make_async_client) -> None:
    frames = [solid(color=(i, 0, 0)) for i in range(4)]
    script = [
        ("predict", ("digits", solid()), {"top_k": 3}),
        ("predict_batch", ("digits", [solid(), solid(size=(3, 3))]), {}),
        ("predict_clip", ("motion", frames), {}),
        ("list_adapters", (), {}),
        ("get_adapter", ("digits",), {}),
        ("upload_adapter", (b"weights", "cars"), {}),
        ("delete_adapter", ("cars",), {}),
        ("health", (), {}),
        ("ready", (), {}),
    ]
    with make_client(fake.handle) as client:
        sync_answers = [getattr(client, name)(*args, **kwargs) for name, args, kwargs in script]
    sync_requests = [(r.method, str(r.url), r.content) for r in fake.requests]
    fake.requests.clear()
    async with make_async_client(fake.handle) as aclient:
        async_answers = [await getattr(aclient, name)(*args, **kwargs) for name, args, kwargs in script]
    async_requests = [(r.method, str(r.url), r.content) for r in fake.requests]

    assert async_answers == sync_answers
    # Same bodies too, up to the random multipart boundary.
    assert [(m, u, len(c)) for m, u, c in async_requests] == [(m, u, len(c)) for m, u, c in sync_requests]


def test_clients_send_the_api_key_as_bearer_and_strip_the_url(fake) -> None:
    client = Client("http://adaptformer.test/", api_key="s3cret", transport=fake.transport())
    fake.api_key = "s3cret"
    client.list_adapters()
    assert client.base_url == "http://adaptformer.test"
    assert fake.requests[-1].headers["authorization"] == "Bearer s3cret"
    assert fake.requests[-1].headers["user-agent"].startswith("adaptformer-client/")
    assert repr(client) == "Client('http://adaptformer.test')"
    assert repr(AsyncClient()) == "AsyncClient('http://127.0.0.1:8000')"
