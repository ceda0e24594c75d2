"""The client's traffic-split calls (split, get_split, promote, abort_split) and CLI subcommands, through Client and
AsyncClient, against a fake of the split routes whose bodies are the server's own schemas."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from adaptformer_client import ConflictError, IncompatibleAdapterError, InvalidInputError
from adaptformer_client.cli import main
from adaptformer_server import schemas
from tests.client.conftest import adapter_info, error

OLD, NEW = "3f2a9c1b7d4e", "9c1b7d4e3f2a"


class SplitFake:
    """One task, ``cars``, with two kept versions (NEW current) and the split routes."""

    def __init__(self) -> None:
        self.current = NEW
        self.split: dict[str, float] | None = None
        self.seen: list[tuple[str, str, Any]] = []

    def info(self) -> httpx.Response:
        versions = self.split or {self.current: 1.0}
        body = schemas.SplitInfo(task="cars", current=self.current, active=self.split is not None, versions=versions)
        return httpx.Response(200, json=body.model_dump(mode="json"))

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.seen.append((request.method, request.url.path, body))
        path = request.url.path
        if path == "/adapters/cars/split" and request.method == "GET":
            return self.info()
        if path == "/adapters/cars/split" and request.method == "PUT":
            weights = body["versions"]
            if abs(sum(weights.values()) - 1) > 1e-6:
                return error(400, "invalid_input", "bad split for task 'cars': the weights must sum to 1")
            self.split = weights
            return self.info()
        if path == "/adapters/cars/split" and request.method == "DELETE":
            if self.split is None:
                return error(409, "conflict", "task 'cars' has no traffic split")
            self.split = None
            return self.info()
        if path == "/adapters/cars/split/promote":
            if self.split is None or body["version"] not in self.split:
                return error(409, "conflict", "not in the split")
            previous, self.current, self.split = self.current, body["version"], None
            adapter = adapter_info("cars", ["a", "b"])
            adapter["version"] = self.current
            return httpx.Response(200, json={"adapter": adapter, "previous_version": previous})
        return error(404, "not_found", f"no route {path}")


@pytest.fixture
def fake() -> SplitFake:
    return SplitFake()


async def test_split_get_promote_abort(fake: SplitFake, through: Callable[..., AbstractAsyncContextManager]):
    async with through(fake.handle) as call:
        info = await call("get_split", "cars")
        assert (info.active, info.versions) == (False, {NEW: 1.0})
        info = await call("split", "cars", {OLD: 0.9, NEW: 0.1})
        assert fake.seen[-1] == ("PUT", "/adapters/cars/split", {"versions": {OLD: 0.9, NEW: 0.1}})
        assert info.active and info.versions == {OLD: 0.9, NEW: 0.1}
        with pytest.raises(InvalidInputError, match="sum to 1"):
            await call("split", "cars", {OLD: 0.9, NEW: 0.2})
        assert (await call("abort_split", "cars")).versions == {NEW: 1.0}
        with pytest.raises(ConflictError, match="no traffic split") as conflict:
            await call("abort_split", "cars")
        assert (conflict.value.status, conflict.value.code) == (409, "conflict")
        assert not isinstance(conflict.value, IncompatibleAdapterError)
        assert fake.seen[-1][:2] == ("DELETE", "/adapters/cars/split")
        assert len([s for s in fake.seen if s[0] == "DELETE"]) == 2  # a 409 is not resent
        await call("split", "cars", {OLD: 0.5, NEW: 0.5})
        promoted = await call("promote", "cars", OLD)
        assert fake.seen[-1] == ("POST", "/adapters/cars/split/promote", {"version": OLD})
        assert promoted.adapter.version == OLD and promoted.previous_version == NEW
        assert (await call("get_split", "cars")).versions == {OLD: 1.0}


def test_cli_split_promote_abort(fake: SplitFake, capsys):
    transport = httpx.MockTransport(fake.handle)
    assert main(["split", "cars", f"{OLD}=0.9", f"{NEW}=0.1"], transport=transport) == 0
    assert capsys.readouterr().out.strip() == f"cars: {OLD} 0.9, {NEW} 0.1"
    assert main(["split", "cars", "--json"], transport=transport) == 0
    assert json.loads(capsys.readouterr().out)["versions"] == {OLD: 0.9, NEW: 0.1}
    assert main(["promote", "cars", OLD], transport=transport) == 0
    assert f"version {OLD} is current (was {NEW})" in capsys.readouterr().out
    assert main(["abort", "cars"], transport=transport) == 1  # no split any more: the server's message
    assert "no traffic split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["split", "cars", "nonsense"], transport=transport)
    assert "VERSION=WEIGHT" in capsys.readouterr().err
