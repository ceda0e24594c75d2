"""The Host check comes before everything that answers: a CORS preflight to a foreign Host (DNS rebinding) was
answered 200, with the allowed origin, before the Host was looked at. In-process: the middleware answers both,
no backbone is loaded."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from adaptformer_server import create_app
from adaptformer_server.settings import Settings

ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization",
}


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ADAPTFORMER_ALLOWED_HOSTS", raising=False)
    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "jobs", seed_demo=False, cors_origins=ORIGIN)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        yield c


@pytest.mark.parametrize("path", ["/predict?task=t00", "/adapters", "/v2/models/t00/infer"])
async def test_a_preflight_to_a_foreign_host_is_refused(client: httpx.AsyncClient, path: str):
    r = await client.options(path, headers={**PREFLIGHT, "Host": "rebind.evil.example:8000"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_host"
    assert "rebind.evil.example" in r.json()["error"]["message"]
    assert "access-control-allow-methods" not in r.headers  # nothing of the CORS policy is given away
    assert r.headers["X-Request-ID"]


async def test_a_preflight_to_an_allowed_host_is_still_answered(client: httpx.AsyncClient):
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        r = await client.options("/predict?task=t00", headers={**PREFLIGHT, "Host": host})
        assert r.status_code == 200, (host, r.text)
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in r.headers["access-control-allow-methods"]
