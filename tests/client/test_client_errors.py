"""Every error status of the contract maps to its typed exception, carrying the server's message."""

from __future__ import annotations

import sys

import httpx
import numpy as np
import pytest

import adaptformer_client as ac
from adaptformer_server import schemas
from tests.support import run_python

CASES = [
    (400, "invalid_input", ac.InvalidInputError),
    (401, "unauthorized", ac.AuthError),
    (403, "forbidden", ac.PermissionDeniedError),
    (404, "not_found", ac.NotFoundError),
    (409, "incompatible_adapter", ac.IncompatibleAdapterError),
    (409, "conflict", ac.ConflictError),
    (413, "payload_too_large", ac.PayloadTooLargeError),
    (415, "unsupported_media_type", ac.UnsupportedMediaTypeError),
    (422, "invalid_adapter", ac.InvalidAdapterError),
    (422, "validation_error", ac.InvalidInputError),
    (503, "overloaded", ac.OverloadedError),
    (503, "not_ready", ac.OverloadedError),
    (500, "internal_error", ac.ServerError),
]


@pytest.mark.parametrize(("status", "code", "cls"), CASES)
def test_parse_error_maps_status_and_code(status: int, code: str, cls: type) -> None:
    exc = ac.parse_error(status, {"error": {"code": code, "message": "what is wrong and what to do"}})
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.message, str(exc)) == (status, code, *["what is wrong and what to do"] * 2)
    assert exc.check is None


def test_parse_error_keeps_the_check_and_retry_after() -> None:
    exc = ac.parse_error(409, {"error": {"code": "incompatible_adapter", "message": "m", "check": "shapes"}})
    assert isinstance(exc, ac.IncompatibleAdapterError) and exc.check == "shapes"
    busy = ac.parse_error(503, {"error": {"code": "overloaded", "message": "queue full"}}, retry_after=2.0)
    assert isinstance(busy, ac.OverloadedError) and busy.retry_after == 2.0


def test_parse_error_falls_back_on_status_for_unknown_bodies() -> None:
    assert type(ac.parse_error(404, {"detail": "Not Found"})) is ac.NotFoundError
    assert ac.parse_error(404, {"detail": "Not Found"}).message == "Not Found"
    assert type(ac.parse_error(429, {})) is ac.OverloadedError
    bad_gateway = ac.parse_error(502, "<html>502 Bad Gateway</html>")
    assert type(bad_gateway) is ac.ServerError and bad_gateway.message == "<html>502 Bad Gateway</html>"
    assert ac.parse_error(418, None).message == "HTTP 418 from the server, with no error message"
    assert ac.parse_error(503, {"status": "loading"}).message == "server is loading"


def test_permission_denied_is_an_auth_error_and_all_share_one_base() -> None:
    assert issubclass(ac.PermissionDeniedError, ac.AuthError)
    for _, _, cls in CASES:
        assert issubclass(cls, ac.AdaptformerClientError)
    assert issubclass(ac.APITimeoutError, ac.APIConnectionError)
    assert issubclass(ac.APIConnectionError, ac.AdaptformerClientError)


@pytest.mark.parametrize(("status", "code", "cls"), CASES)
async def test_clients_raise_the_typed_error(make_client, make_async_client, status: int, code: str, cls: type) -> None:
    check = "fingerprint" if status == 409 else None

    def handler(request: httpx.Request) -> httpx.Response:
        body = schemas.ErrorResponse(error=schemas.ErrorDetail(code=code, message=f"server says {code}", check=check))
        return httpx.Response(status, json=body.model_dump(exclude_none=True))

    with pytest.raises(cls) as sync_info, make_client(handler, max_retries=0) as client:
        client.get_adapter("digits")
    async with make_async_client(handler, max_retries=0) as aclient:
        with pytest.raises(cls) as async_info:
            await aclient.get_adapter("digits")
    for info in (sync_info, async_info):
        assert type(info.value) is cls
        assert (info.value.status, info.value.code, info.value.message, info.value.check) == (
            status,
            code,
            f"server says {code}",
            check,
        )


async def test_fake_server_errors_through_every_route(call, fake) -> None:
    with pytest.raises(ac.NotFoundError, match="GET /adapters lists the tasks"):
        await call("predict", "nope", b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ac.InvalidInputError, match="takes images, not clips"):
        await call("predict_clip", "digits", [b"a", b"b"])
    with pytest.raises(ac.InvalidInputError, match="3 frames"):
        await call("predict_clip", "motion", [b"a", b"b", b"c"])
    with pytest.raises(ac.InvalidAdapterError, match="not a safetensors file") as invalid:
        await call("upload_adapter", b"BAD file")
    assert invalid.value.code == "invalid_adapter"
    with pytest.raises(ac.IncompatibleAdapterError) as incompatible:
        await call("upload_adapter", b"ALIEN weights")
    assert incompatible.value.check == "fingerprint"
    with pytest.raises(ac.NotFoundError):
        await call("delete_adapter", "nope")
    fake.api_key = "other"
    with pytest.raises(ac.PermissionDeniedError, match="wrong API key"):
        await call("list_adapters")


def test_missing_key_is_an_auth_error(make_client, fake) -> None:
    fake.api_key = "k"
    with make_client(fake.handle) as client, pytest.raises(ac.AuthError) as info:
        client.list_adapters()
    assert type(info.value) is ac.AuthError and info.value.status == 401


async def test_connection_errors(make_client, make_async_client) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with make_client(refused, max_retries=0) as client, pytest.raises(ac.APIConnectionError) as refused_info:
        client.health()
    assert "cannot connect to http://adaptformer.test" in refused_info.value.message
    assert refused_info.value.status is None
    async with make_async_client(slow, max_retries=0) as aclient:
        with pytest.raises(ac.APITimeoutError, match=r"no answer from http://adaptformer\.test"):
            await aclient.health()


def test_malformed_success_body_is_a_server_error(make_client) -> None:
    with make_client(lambda r: httpx.Response(200, json={"unexpected": 1})) as client:
        with pytest.raises(ac.ServerError, match="unexpected answer from the server to GET /adapters/x"):
            client.get_adapter("x")
        with pytest.raises(ac.ServerError):
            client.list_adapters()


def test_bad_inputs_fail_before_sending(make_client, tmp_path) -> None:
    sent: list[httpx.Request] = []
    with make_client(lambda r: sent.append(r) or httpx.Response(500)) as client:
        with pytest.raises(TypeError, match="use predict_batch"):
            client.predict("digits", [b"a", b"b"])
        with pytest.raises(TypeError, match="cannot send a int as an image"):
            client.predict("digits", 3)
        with pytest.raises(TypeError, match=r"must be uint8.*astype"):
            client.predict("digits", np.zeros((4, 4), np.float32))
        with pytest.raises(TypeError, match="HxW, HxWx3 or HxWx4"):
            client.predict("digits", np.zeros((4, 4, 2), np.uint8))
        with (tmp_path / "t.txt").open("w+") as text_file, pytest.raises(TypeError, match="binary mode"):
            client.predict("digits", text_file)
        with pytest.raises(ValueError, match="at least one image"):
            client.predict_batch("digits", [])
        with pytest.raises(FileNotFoundError):
            client.predict("digits", tmp_path / "missing.png")
        with pytest.raises(TypeError, match="cannot upload a dict"):
            client.upload_adapter({})
    assert sent == []


def test_array_without_pillow_says_to_install_it(make_client, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    monkeypatch.delitem(sys.modules, "PIL.Image", raising=False)  # imported or not
    with (
        make_client(lambda r: httpx.Response(500)) as client,
        pytest.raises(
            ImportError, match=r"needs Pillow: install Pillow \(pip install 'adaptformer-client\[images\]'\)"
        ),
    ):
        client.predict("digits", np.zeros((4, 4), np.uint8))


def test_bytes_and_paths_need_neither_pillow_nor_numpy(tmp_path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n...")
    code = (
        "import httpx, adaptformer_client as ac\n"
        "seen = []\n"
        "def handler(request):\n"
        "    seen.append(request)\n"
        "    return httpx.Response(200, json={'task': 't', 'version': 'v', 'modality': 'image',\n"
        "        'predictions': [[{'label': 'a', 'score': 1.0}]], 'latency_ms': 1.0})\n"
        "c = ac.Client('http://x', transport=httpx.MockTransport(handler))\n"
        f"assert c.predict('t', {str(path)!r}).top.label == 'a'\n"
        "assert c.predict('t', b'GIF89a...').top.label == 'a'\n"
        "assert c.predict_clip('t', [b'a', b'b']).top.label == 'a'\n"
        "assert len(seen) == 3\n"
    )
    run_python(code, blocked=("PIL", "numpy"))
