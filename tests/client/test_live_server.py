"""The client against a real ``python -m adaptformer_server`` process on a free loopback port.

One server for the module: the embedded backbone architecture with random weights, an image task ``digits`` and a
4-frame clip task ``motion`` with random adapters and heads, so their scores depend on every pixel; predict and admin
keys, and small limits so that 413 and 503 can be provoked on purpose. Answers are compared, label and score, with
the same adapter files run in this process on the images as the API documents them (grey and RGB as they are,
transparency on white, frames in order).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

import adaptformer as af
import adaptformer_client as ac
from adaptformer.adapter_file import task_from_bytes
from adaptformer.preprocess import preprocess_clip, preprocess_image
from adaptformer_client.cli import main as cli_main
from tests.support import ServerProcess, adapter_bytes, embedded_backbone, gif, png

pytest.importorskip("adaptformer_server.app")  # the server runs in a subprocess; skip where it is not installed
pytestmark = pytest.mark.e2e

PREDICT_KEY, ADMIN_KEY = "predict-key", "admin-key"
QUEUE_SIZE, MAX_IMAGES = 4, 6  # 5 images overflow the queue (503), 7 are too many for one request (413)
TOL = 1e-4  # a softmax score from the server vs the same input run here (batching changes the last bits only)

Scored = list[tuple[str, float]]  # (label, score), best first


@dataclass
class Live:
    url: str
    vit: torch.nn.Module  # the served backbone without its head: adapters made on it fit
    engine: af.MultiTaskViT  # the served tasks' files on the same backbone, run in this process

    def client(self, api_key: str | None = PREDICT_KEY, **kwargs) -> ac.Client:
        kwargs.setdefault("timeout", 30)
        return ac.Client(self.url, api_key=api_key, **kwargs)

    def expected(self, task: str, image: Image.Image | list[Image.Image], top_k: int = 4) -> Scored:
        """The answer for one image (or one clip: a list of frames) run here: labels and softmax scores."""
        entry = self.engine.tasks[task]
        spec = entry.info.input
        x = preprocess_clip(image, spec) if isinstance(image, list) else preprocess_image(image, spec)
        probs = torch.softmax(self.engine(x.unsqueeze(0), task)[0].float(), dim=0)
        scores, index = probs.topk(min(top_k, probs.numel()))
        return [(entry.info.labels[i], s) for i, s in zip(index.tolist(), scores.tolist(), strict=True)]


def same_answer(got: list, expected: Scored) -> bool:
    """A server answer (a list of predictions) equals ``expected``: the same labels in order, scores within TOL."""
    return [p.label for p in got] == [label for label, _ in expected] and all(
        abs(p.score - score) <= TOL for p, (_, score) in zip(got, expected, strict=True)
    )


def assert_answer(got: list, expected: Scored) -> None:
    assert same_answer(got, expected), ([(p.label, round(p.score, 5)) for p in got], expected)


def pil(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def gif_frames(data: bytes) -> list[Image.Image]:
    """The frames of an animated GIF as they show (each frame whole, in order)."""
    return [frame.convert("RGB") for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data)))]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    weights = root / "backbone.safetensors"
    vit = embedded_backbone(weights, seed=0)
    store = root / "store"
    store.mkdir()
    engine = af.MultiTaskViT(copy.deepcopy(vit))
    for task, data in (
        ("digits", adapter_bytes(vit, "digits")),
        ("motion", adapter_bytes(vit, "motion", clip=True, seed=2)),
    ):
        (store / f"{task}.safetensors").write_bytes(data)
        engine.add_task(task, task_from_bytes(data))

    env = {
        "ADAPTFORMER_API_KEYS": PREDICT_KEY,
        "ADAPTFORMER_ADMIN_KEY": ADMIN_KEY,
        "ADAPTFORMER_MAX_WAIT_MS": "2",
        "ADAPTFORMER_QUEUE_SIZE": str(QUEUE_SIZE),
        "ADAPTFORMER_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
    }
    args = ["--weights", weights, "--store", store, "--no-seed-demo", "--log-level", "warning"]
    with ServerProcess(args, log=root / "server.log", env=env, ready_timeout=120) as server:
        live = Live(server.url, vit, engine)
        with live.client(max_retries=0, timeout=2) as probe:
            assert probe.ready().is_ready
        yield live


def test_health_ready_and_metrics(live: Live) -> None:
    with live.client(api_key=None) as client:
        assert client.health().status == "ok"
        ready = client.wait_until_ready(timeout=5)
        assert ready.is_ready and ready.backbone == "adaptformer-embedded-vit" and ready.adapters >= 2
        assert "adaptformer_predict_requests_total" in client.metrics()


def test_list_and_get_adapters(live: Live) -> None:
    with live.client() as client:
        adapters = {a.task: a for a in client.list_adapters()}
        assert {"digits", "motion"} <= set(adapters)
        digits = client.get_adapter("digits")
        assert digits == adapters["digits"]
        assert (digits.modality, digits.num_classes, digits.labels[2]) == ("image", 4, "digits-2")
        assert len(digits.version) == 12 and digits.method == "adaptformer"
        motion = client.get_adapter("motion")
        assert (motion.modality, motion.frames) == ("clip", 4)


GRAY = np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8)
RGBA = np.random.default_rng(0).integers(0, 256, (30, 20, 4), dtype=np.uint8)


def scores(answer: Scored) -> dict[str, float]:
    return dict(answer)


def differ(a: Scored, b: Scored) -> bool:
    """Two answers a test can tell apart: some label's score differs by far more than TOL."""
    sa, sb = scores(a), scores(b)
    return max(abs(sa[k] - sb.get(k, 0.0)) for k in sa) > 20 * TOL


def test_answers_depend_on_the_pixels(live: Live) -> None:
    """The checks below are not vacuous: different inputs, and the wrong reading of an input, answer differently."""
    photo = live.expected("digits", pil(png(7)))
    grey = live.expected("digits", Image.fromarray(GRAY))
    rgba = live.expected("digits", Image.fromarray(RGBA))
    assert differ(photo, grey) and differ(photo, rgba) and differ(grey, rgba)
    assert differ(rgba, live.expected("digits", Image.fromarray(RGBA[..., :3])))  # alpha dropped, not composited
    assert differ(grey, live.expected("digits", Image.fromarray(255 - GRAY)))
    frames = [pil(png(i)) for i in range(4)]
    assert differ(live.expected("motion", frames), live.expected("motion", [pil(png(i + 4)) for i in range(4)]))


@pytest.mark.parametrize("kind", ["path", "bytes", "file", "pil", "gray array", "rgba array"])
def test_predict_every_input_kind(live: Live, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(png(7))
    image = {
        "path": path,
        "bytes": png(7),
        "file": io.BytesIO(png(7)),
        "pil": Image.open(io.BytesIO(png(7))),
        "gray array": GRAY,
        "rgba array": RGBA,
    }[kind]
    # what the server must have seen: the PNG's pixels; a grey image as grey; RGBA composited on white
    shown = {"gray array": Image.fromarray(GRAY), "rgba array": Image.fromarray(RGBA)}.get(kind) or pil(png(7))
    with live.client() as client:
        answer = client.predict("digits", image, top_k=3)
        assert (answer.task, answer.modality, answer.version) == (
            "digits",
            "image",
            client.get_adapter("digits").version,
        )
        assert len(answer.predictions) == 1 and answer.latency_ms > 0
        assert_answer(answer.predictions[0], live.expected("digits", shown, top_k=3))


def test_top_k_is_clamped_to_the_classes(live: Live) -> None:
    with live.client() as client:
        assert len(client.predict("digits", png(1), top_k=100).predictions[0]) == 4
        assert len(client.predict("digits", png(1)).predictions[0]) == 4


def test_predict_batch_answers_in_order(live: Live) -> None:
    black = np.zeros((8, 8, 3), np.uint8)
    expected = [live.expected("digits", img) for img in (pil(png(1)), pil(png(2, (64, 48))), Image.fromarray(black))]
    assert differ(expected[0], expected[1]) and differ(expected[1], expected[2]) and differ(expected[0], expected[2])
    with live.client() as client:
        answer = client.predict_batch("digits", [png(1), png(2, (64, 48)), black])
        assert len(answer.predictions) == 3
        for got, want in zip(answer.predictions, expected, strict=True):
            assert_answer(got, want)
        assert [p.label for p in answer.tops] == [want[0][0] for want in expected]
        with pytest.raises(ValueError, match="3 inputs"):
            _ = answer.top


def test_predict_clip_from_frames_gif_and_array(live: Live) -> None:
    array = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with live.client() as client:
        frames = client.predict_clip("motion", [png(i) for i in range(4)])
        assert frames.modality == "clip" and len(frames.predictions) == 1
        assert_answer(frames.predictions[0], live.expected("motion", [pil(png(i)) for i in range(4)]))
        assert_answer(client.predict_clip("motion", gif(4)).predictions[0], live.expected("motion", gif_frames(gif(4))))
        from_array = client.predict_clip("motion", array, top_k=2)
        assert_answer(from_array.predictions[0], live.expected("motion", [Image.fromarray(a) for a in array], top_k=2))


async def test_async_client_gives_the_same_answers(live: Live) -> None:
    images = [png(3), png(4)]
    with live.client() as client:
        sync = [
            client.predict("digits", images[0]),
            client.predict_batch("digits", images),
            client.predict_clip("motion", [png(i) for i in range(4)]),
            client.list_adapters(),
            client.get_adapter("motion"),
            client.ready(),
        ]
    async with ac.AsyncClient(live.url, api_key=PREDICT_KEY, timeout=30) as aclient:
        answers = [
            await aclient.predict("digits", images[0]),
            await aclient.predict_batch("digits", images),
            await aclient.predict_clip("motion", [png(i) for i in range(4)]),
            await aclient.list_adapters(),
            await aclient.get_adapter("motion"),
            await aclient.ready(),
        ]
        assert (await aclient.health()).status == "ok"
    shown = [[pil(images[0])], [pil(i) for i in images], [[pil(png(i)) for i in range(4)]]]
    for mine, theirs, inputs, task in zip(answers[:3], sync[:3], shown, ["digits", "digits", "motion"], strict=True):
        assert (mine.task, mine.version, mine.modality) == (theirs.task, theirs.version, theirs.modality)
        assert len(mine.predictions) == len(theirs.predictions) == len(inputs)
        for a, b, image in zip(mine.predictions, theirs.predictions, inputs, strict=True):
            want = live.expected(task, image)
            assert_answer(a, want)
            assert_answer(b, want)
    assert answers[3:] == sync[3:]


def test_upload_replace_predict_delete(live: Live, tmp_path: Path) -> None:
    path = tmp_path / "cars.safetensors"
    path.write_bytes(adapter_bytes(live.vit, "cars", winner=3, seed=5))
    with live.client(api_key=ADMIN_KEY) as admin, live.client() as client:
        first = admin.upload_adapter(path)
        assert (first.adapter.task, first.replaced, first.previous_version) == ("cars", False, None)
        assert client.predict("cars", png(1)).top.label == "cars-3"

        second = admin.upload_adapter(adapter_bytes(live.vit, "cars", winner=0, seed=6))
        assert second.replaced and second.previous_version == first.adapter.version
        answer = client.predict("cars", png(1))
        assert (answer.version, answer.top.label) == (second.adapter.version, "cars-0")

        renamed = admin.upload_adapter(io.BytesIO(path.read_bytes()), task="trucks")
        assert renamed.adapter.task == "trucks" and not renamed.replaced
        assert client.get_adapter("trucks").version == renamed.adapter.version

        for task, version in (("cars", second.adapter.version), ("trucks", renamed.adapter.version)):
            deleted = admin.delete_adapter(task)
            assert (deleted.task, deleted.deleted, deleted.version) == (task, True, version)
            with pytest.raises(ac.NotFoundError):
                client.predict(task, png(1))


def test_not_found(live: Live) -> None:
    with live.client(api_key=ADMIN_KEY) as client:
        for call in (lambda: client.get_adapter("nope"), lambda: client.predict("nope", png(1))):
            with pytest.raises(ac.NotFoundError, match="GET /adapters") as info:
                call()
            assert (info.value.status, info.value.code) == (404, "not_found")
        with pytest.raises(ac.NotFoundError):
            client.delete_adapter("nope")


def test_invalid_input(live: Live) -> None:
    with live.client() as client:
        cases = {
            "undecodable": lambda: client.predict("digits", b"this is not an image"),
            "clip to image task": lambda: client.predict_clip("digits", [png(i) for i in range(4)]),
            "image to clip task": lambda: client.predict("motion", png(1)),
            "frame count": lambda: client.predict_clip("motion", [png(i) for i in range(3)]),
            "top_k": lambda: client.predict("digits", png(1), top_k=0),
        }
        for name, call in cases.items():
            with pytest.raises(ac.InvalidInputError) as info:
                call()
            assert info.value.status in (400, 422) and info.value.message, name


def test_auth(live: Live) -> None:
    with live.client(api_key=None) as anonymous, pytest.raises(ac.AuthError) as missing:
        anonymous.list_adapters()
    assert type(missing.value) is ac.AuthError and missing.value.status == 401
    with live.client(api_key="wrong") as wrong, pytest.raises(ac.PermissionDeniedError) as denied:
        wrong.predict("digits", png(1))
    assert denied.value.status == 403
    with live.client() as predictor, pytest.raises(ac.PermissionDeniedError):
        predictor.upload_adapter(adapter_bytes(live.vit, "cars", winner=1))  # a predict key is not an admin key
    with live.client() as predictor, pytest.raises(ac.PermissionDeniedError):
        predictor.delete_adapter("digits")


def test_invalid_and_incompatible_adapters(live: Live) -> None:
    with live.client(api_key=ADMIN_KEY) as admin:
        with pytest.raises(ac.InvalidAdapterError) as invalid:
            admin.upload_adapter(b"not a safetensors file")
        assert (invalid.value.status, invalid.value.code) == (422, "invalid_adapter")
        with pytest.raises(ac.InvalidAdapterError):
            admin.upload_adapter(adapter_bytes(live.vit, "cars", winner=1), task="bad/name")

        other = embedded_backbone(seed=1)  # other weights: another fingerprint
        with pytest.raises(ac.IncompatibleAdapterError) as incompatible:
            admin.upload_adapter(adapter_bytes(other, "alien", winner=1))
        assert incompatible.value.status == 409 and incompatible.value.check == "fingerprint"
        assert "alien" not in {a.task for a in admin.list_adapters()}


def test_payload_too_large(live: Live) -> None:
    with live.client() as client, pytest.raises(ac.PayloadTooLargeError) as info:
        client.predict_batch("digits", [png(i) for i in range(MAX_IMAGES + 1)])
    assert info.value.status == 413 and str(MAX_IMAGES) in info.value.message


def test_overloaded_is_retried_as_retry_after_asks_then_raised(live: Live) -> None:
    sleeps: list[float] = []
    with live.client(max_retries=2, sleep=sleeps.append) as client, pytest.raises(ac.OverloadedError) as info:
        client.predict_batch("digits", [png(i) for i in range(QUEUE_SIZE + 1)])
    assert info.value.status == 503 and info.value.code == "overloaded"
    assert info.value.retry_after is not None and sleeps == [info.value.retry_after] * 2


def test_unsupported_media_type_maps_through_parse_error(live: Live) -> None:
    # The client always sends multipart; a raw request shows how the server's 415 is typed.
    response = httpx.post(
        f"{live.url}/predict?task=digits",
        content=b"hello",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {PREDICT_KEY}"},
    )
    error = ac.parse_error(response.status_code, response.json())
    assert isinstance(error, ac.UnsupportedMediaTypeError) and error.status == 415
    assert isinstance(error, ac.AdaptformerClientError) and error.message


def test_cli_against_the_server(live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "seven.png"
    image.write_bytes(png(9))
    base = ["--url", live.url, "--api-key", PREDICT_KEY]
    assert cli_main([*base, "predict", "--task", "digits", str(image), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[0] == live.expected("digits", pil(png(9)))[0][0]
    assert cli_main([*base, "adapters"]) == 0
    assert "motion" in capsys.readouterr().out
    assert cli_main([*base, "health"]) == 0
    assert cli_main([*base, "adapters", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_predict_many_matches_single_predictions(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = adapter_bytes(live.vit, "letters", seed=5)
    live.engine.add_task("letters", task_from_bytes(letters))
    with live.client(api_key=ADMIN_KEY) as admin:
        admin.upload_adapter(letters, task="letters")
        try:
            with live.client() as client:
                many = client.predict_many(["digits", "letters"], png(3), top_k=4)
                assert many.tasks == ["digits", "letters"] and many.latency_ms > 0
                assert differ(live.expected("digits", pil(png(3))), live.expected("letters", pil(png(3))))
                for task in many.tasks:
                    single = client.predict(task, png(3), top_k=4)
                    assert many[task].version == single.version
                    assert_answer(many[task].predictions[0], live.expected(task, pil(png(3))))
                    assert_answer(single.predictions[0], live.expected(task, pil(png(3))))
                star = client.predict_many("*", [png(1), png(2)], top_k=1)
                assert star.tasks == ["digits", "letters"] and [len(r.predictions) for r in star.results] == [2, 2]
                for result in star.results:
                    for got, image in zip(result.predictions, [png(1), png(2)], strict=True):
                        assert_answer(got, live.expected(result.task, pil(image), top_k=1))
                one = client.predict_many(["digits"], png(3))  # one task: the server answers the single shape
                assert one.tasks == ["digits"]

            async def run_async() -> None:
                async with ac.AsyncClient(live.url, api_key=PREDICT_KEY) as aclient:
                    answer = await aclient.predict_many(["letters", "digits"], png(3))
                    assert answer.tasks == ["letters", "digits"]

            asyncio.run(run_async())
            base = ["--url", live.url, "--api-key", PREDICT_KEY]
            image = tmp_path / "three.png"
            image.write_bytes(png(3))
            capsys.readouterr()
            assert cli_main([*base, "predict", "--task", "digits", "--task", "letters", str(image)]) == 0
            out = capsys.readouterr().out
            assert "digits (version" in out and "letters (version" in out and "2 tasks in one request" in out
            assert cli_main([*base, "predict", "--task", "*", str(image), "--json"]) == 0
            answer = json.loads(capsys.readouterr().out)
            assert [r["task"] for r in answer["results"]] == ["digits", "letters"]
        finally:
            admin.delete_adapter("letters")
            live.engine.remove_task("letters")
