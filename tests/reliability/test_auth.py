"""Item 6: with keys configured, admin routes refuse missing and wrong keys, and a predict key cannot upload or
delete. Runs against a server process started with ADAPTFORMER_API_KEYS and ADAPTFORMER_ADMIN_KEY."""

from __future__ import annotations

import httpx
import pytest

from benchmarks.reliability import ADMIN_KEY, PREDICT_KEY, Kit, Server, make_images

pytestmark = pytest.mark.e2e

OPEN = {"/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _xkey(key: str | None) -> dict[str, str]:
    return {"X-API-Key": key} if key else {}


KEYS = {
    "missing": (None, 401),
    "wrong": ("not-the-key", 403),
    "empty-bearer": ("", 401),
    "predict-key": (PREDICT_KEY, 403),  # on admin routes
    "admin-key-with-suffix": (ADMIN_KEY + "x", 403),
    "admin-key-prefix": (ADMIN_KEY[:-1], 403),
}


def _admin_requests(kit: Kit) -> dict[str, tuple[str, str, dict]]:
    upload = {"files": {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}}
    return {
        "upload": ("POST", "/adapters", upload),
        "upload-replace": ("POST", "/adapters", {**upload, "data": {"task": "t00"}}),
        "delete": ("DELETE", "/adapters/t01", {}),
        "delete-unknown": ("DELETE", "/adapters/nope", {}),
    }


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
@pytest.mark.parametrize("key_case", list(KEYS))
@pytest.mark.parametrize("route", ["upload", "upload-replace", "delete", "delete-unknown"])
def test_admin_routes_refuse(route: str, key_case: str, style: str, keyed_server: Server, kit: Kit):
    key, status = KEYS[key_case]
    method, path, kw = _admin_requests(kit)[route]
    headers = (_bearer if style == "bearer" else _xkey)(key)
    before = httpx.get(f"{keyed_server.url}/adapters", headers=_bearer(ADMIN_KEY), timeout=30).json()
    r = httpx.request(method, f"{keyed_server.url}{path}", headers=headers, timeout=30, **kw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == ("unauthorized" if status == 401 else "forbidden")
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    after = httpx.get(f"{keyed_server.url}/adapters", headers=_bearer(ADMIN_KEY), timeout=30).json()
    assert after == before  # nothing was stored, replaced or deleted
    assert sorted(p.name for p in keyed_server.store.glob("*.safetensors")) == [
        "t00.safetensors",
        "t01.safetensors",
        "t02.safetensors",
    ]


@pytest.mark.parametrize("route", ["predict", "list", "get"])
def test_predict_routes_need_a_key(route: str, keyed_server: Server):
    image = make_images(1)[0]
    method, path, kw = {
        "predict": ("POST", "/predict?task=t00", {"files": [("image", image)]}),
        "list": ("GET", "/adapters", {}),
        "get": ("GET", "/adapters/t00", {}),
    }[route]
    url = f"{keyed_server.url}{path}"
    r = httpx.request(method, url, timeout=30, **kw)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.request(method, url, headers=_bearer("wrong"), timeout=30, **kw).status_code == 403
    assert httpx.request(method, url, headers=_bearer(PREDICT_KEY), timeout=30, **kw).status_code == 200
    assert httpx.request(method, url, headers=_xkey(PREDICT_KEY), timeout=30, **kw).status_code == 200
    assert httpx.request(method, url, headers=_bearer(ADMIN_KEY), timeout=30, **kw).status_code == 200


def test_admin_key_can_upload_and_delete(keyed_server: Server, kit: Kit):
    url = keyed_server.url
    up = httpx.post(
        f"{url}/adapters",
        headers=_bearer(ADMIN_KEY),
        files={"file": ("a.safetensors", kit.tasks["t07"], "application/octet-stream")},
        data={"task": "extra"},
        timeout=30,
    )
    assert up.status_code == 201, up.text
    assert httpx.delete(f"{url}/adapters/extra", headers=_xkey(ADMIN_KEY), timeout=30).status_code == 200


def test_every_protected_operation_refuses_missing_and_wrong_keys(keyed_server: Server):
    """Every operation of the server's own OpenAPI schema that declares 401 refuses a missing or wrong key,
    and the core routes are among them; the rest are the open health, metrics and docs routes."""
    schema = httpx.get(f"{keyed_server.url}/openapi.json", timeout=30).json()
    protected = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if "401" not in op.get("responses", {}):
                continue
            protected.append((method.upper(), path))
            concrete = path.replace("{task}", "t00").replace("{name}", "t00").replace("{model_name}", "t00")
            for headers, status in (({}, 401), (_bearer("wrong"), 403), (_xkey("wrong"), 403)):
                r = httpx.request(method.upper(), f"{keyed_server.url}{concrete}", headers=headers, timeout=30)
                assert r.status_code == status, (method, path, headers, r.text)
    assert {("POST", "/predict"), ("GET", "/adapters"), ("GET", "/adapters/{task}"), ("POST", "/adapters"),
            ("DELETE", "/adapters/{task}")} <= set(protected)  # fmt: skip
    # nothing was deleted by the refused DELETE
    assert httpx.get(f"{keyed_server.url}/adapters/t00", headers=_bearer(PREDICT_KEY), timeout=30).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{keyed_server.url}{path}", timeout=30).status_code == 200
