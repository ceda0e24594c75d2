"""Keys: with keys configured, admin routes refuse missing and wrong keys, and a predict key cannot upload or
delete; every route of the app is either open or refuses missing and wrong keys. Runs against a server process
started with ADAPTFORMER_API_KEYS and ADAPTFORMER_ADMIN_KEY; the admin-route rule per configuration runs in process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from adaptformer_server import create_app
from adaptformer_server.settings import Settings
from benchmarks.reliability import ADMIN_KEY, PREDICT_KEY, Kit, Server, make_images

pytestmark = pytest.mark.e2e

# The routes that stay open with keys configured (docs/API.md, "Auth"); every other route of the app needs a key.
OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/",
    "/ui",
    "/ui/examples",
    "/ui/examples/{name}",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
}
# Static files of the playground and of /docs: a file to fetch from each.
OPEN_MOUNTS = {"/ui/static": "/ui/static/app.js", "/docs/static": "/docs/static/swagger-ui.css"}
ADMIN = {
    ("POST", "/adapters"),
    ("DELETE", "/adapters/{task}"),
    ("POST", "/adapters/{task}/rollback"),
    ("PUT", "/adapters/{task}/split"),
    ("DELETE", "/adapters/{task}/split"),
    ("POST", "/adapters/{task}/split/promote"),
    ("POST", "/v2/repository/models/{task}/load"),
    ("POST", "/v2/repository/models/{task}/unload"),
    # training jobs: every route, reading ones included (examples and logs are the admin's)
    ("POST", "/tasks/{task}/train"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/events"),
    ("GET", "/jobs/{job_id}/log"),
    ("DELETE", "/jobs/{job_id}"),
}


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


def _app_routes(tmp_path: Path) -> tuple[set[tuple[str, str]], set[str]]:
    """Every (method, path) the server's app routes (HEAD aside), and its mounts; the app is built, not started."""
    app = create_app(Settings(store=tmp_path / "unused", seed_demo=False))
    routes: set[tuple[str, str]] = set()
    mounts: set[str] = set()

    def walk(items: list) -> None:
        for route in items:
            if isinstance(route, Mount):
                mounts.add(route.path)
            elif isinstance(route, Route):
                routes.update((method, route.path) for method in route.methods or () if method != "HEAD")
            elif hasattr(route, "original_router"):  # FastAPI >= 0.165 keeps included routers (without a prefix here)
                walk(route.original_router.routes)
            else:
                raise AssertionError(f"a route of an unknown kind: {route!r}")

    walk(app.routes)
    return routes, mounts


def test_every_route_is_open_or_refuses_missing_and_wrong_keys(keyed_server: Server, tmp_path: Path):
    """Every route the app has, /v2 included and whether or not its OpenAPI entry declares a 401: the routes of
    OPEN answer without a key; all others answer 401 without a key and 403 with a wrong one, and accept the key of
    their kind (a predict key is refused on admin routes). A new route fails here until it is classified."""
    routes, mounts = _app_routes(tmp_path)
    assert mounts == set(OPEN_MOUNTS)
    assert {path for _, path in routes} >= OPEN
    url = keyed_server.url
    protected = []
    for method, path in sorted(routes):
        concrete = path.replace("{task}", "t00").replace("{version}", "0123456789ab")
        concrete = concrete.replace("{name}", "digits-7.png")  # a playground sample
        if path in OPEN:
            r = httpx.request(method, f"{url}{concrete}", timeout=30, follow_redirects=True)  # / redirects to /ui
            assert r.status_code == 200, (method, path, r.status_code, r.text[:200])
            continue
        protected.append((method, path))
        for headers, status in (({}, 401), (_bearer("wrong"), 403), (_xkey("wrong"), 403)):
            r = httpx.request(method, f"{url}{concrete}", headers=headers, timeout=30)
            assert r.status_code == status, (method, path, headers, r.status_code, r.text[:200])
            if status == 401:
                assert r.headers["www-authenticate"] == "Bearer", (method, path)
        if (method, path) in ADMIN:
            r = httpx.request(method, f"{url}{concrete}", headers=_bearer(PREDICT_KEY), timeout=30)
            assert r.status_code == 403, (method, path, r.text[:200])
        else:  # past auth: whatever the route answers to an empty request, it is not an auth error
            for key in (PREDICT_KEY, ADMIN_KEY):
                r = httpx.request(method, f"{url}{concrete}", headers=_bearer(key), timeout=30)
                assert r.status_code not in (401, 403), (method, path, r.status_code, r.text[:200])
    v2 = {p for p in protected if p[1].startswith("/v2/models")}
    assert {m for m, _ in v2} == {"GET", "POST"} and len(v2) == 8, (
        v2
    )  # metadata, ready, config, infer (each per version)
    assert {("POST", "/predict"), ("GET", "/adapters"), ("GET", "/adapters/{task}")} | ADMIN <= set(protected)
    for mount, file in OPEN_MOUNTS.items():
        assert httpx.get(f"{url}{file}", timeout=30).status_code == 200, mount
    # nothing was deleted by the refused DELETEs
    assert httpx.get(f"{url}/adapters/t00", headers=_bearer(PREDICT_KEY), timeout=30).status_code == 200


# The admin-route rule, one row per configuration (docs/API.md, "Auth"): (settings, key sent, expected status).
ADMIN_RULE = {
    "no keys, loopback: open": ({}, None, 200),
    "no keys, other address: refused": ({"host": "0.0.0.0"}, None, 403),
    "predict keys only, loopback, no key: refused": ({"api_keys": PREDICT_KEY}, None, 403),
    "predict keys only, loopback, predict key: refused": ({"api_keys": PREDICT_KEY}, PREDICT_KEY, 403),
    "admin key, no key: 401": ({"admin_key": ADMIN_KEY}, None, 401),
    "admin key and predict keys, admin key: allowed": (
        {"api_keys": PREDICT_KEY, "admin_key": ADMIN_KEY},
        ADMIN_KEY,
        200,
    ),
}


@pytest.mark.parametrize("case", list(ADMIN_RULE))
async def test_admin_routes_need_the_admin_key_once_any_key_is_set(case: str, kit: Kit, tmp_path: Path):
    """With predict keys set and no admin key, DELETE and POST /adapters are refused even on loopback: a predict
    key (or anyone on the machine) cannot replace or delete tasks. Only a loopback server without any key leaves
    them open."""
    overrides, key, status = ADMIN_RULE[case]
    store = tmp_path / "store"
    store.mkdir()
    (store / "t01.safetensors").write_bytes(kit.tasks["t01"])
    settings = Settings(store=store, seed_demo=False, **overrides)
    app = create_app(settings, backbone=kit.vit)
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_ready(120)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            upload = {"files": {"file": ("a.safetensors", kit.tasks["t02"], "application/octet-stream")}}
            up = await client.post("/adapters", headers=_bearer(key), data={"task": "t02"}, **upload)
            r = await client.delete("/adapters/t01", headers=_bearer(key))
    assert (up.status_code, r.status_code) == (201 if status == 200 else status, status), (up.text, r.text)
    if status == 200:
        assert sorted(p.name for p in store.glob("*.safetensors")) == ["t02.safetensors"]
        return
    assert sorted(p.name for p in store.glob("*.safetensors")) == ["t01.safetensors"]  # nothing stored or deleted
    if status == 403 and key is None:
        assert "set ADAPTFORMER_ADMIN_KEY" in r.json()["error"]["message"]
