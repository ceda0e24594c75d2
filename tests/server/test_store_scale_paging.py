"""GET /adapters in pages (limit, cursor) and filtered (prefix, modality); the client iterates the pages."""

from __future__ import annotations

import httpx
import pytest

from adaptformer_client import AsyncClient
from adaptformer_server import create_app
from adaptformer_server.repository.registry import decode_cursor, encode_cursor
from tests.support import adapter_bytes, serving, upload_files


@pytest.fixture
def many(store, vit):
    """30 image tasks (img00..img29) and 6 clip tasks (vid0..vid5), one file each."""
    image, clip = adapter_bytes(vit, "img", seed=1), adapter_bytes(vit, "vid", seed=2, clip=True)
    for i in range(30):
        (store / f"img{i:02d}.safetensors").write_bytes(image)
    for i in range(6):
        (store / f"vid{i}.safetensors").write_bytes(clip)
    return [f"img{i:02d}" for i in range(30)] + [f"vid{i}" for i in range(6)]


def names(body: dict) -> list[str]:
    return [a["task"] for a in body["adapters"]]


async def test_without_parameters_the_answer_is_every_task_as_before(many, make_settings, vit):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        body = (await client.get("/adapters")).json()
    assert names(body) == many and set(body) == {"adapters"}  # the answer of before paging, key for key


async def test_a_cursor_walk_returns_each_task_once_while_tasks_come_and_go(many, make_settings, vit):
    extra = adapter_bytes(vit, "new", seed=3)
    async with serving(create_app(make_settings(store_poll_ms=0), backbone=vit)) as client:
        walked: list[str] = []
        cursor, pages = None, 0
        removed = {"img03", "img20", "vid4"}  # one before the walk's position, two after
        added = {"img05b", "aaa", "zzz"}
        while True:
            params = {"limit": 7} | ({"cursor": cursor} if cursor else {})
            body = (await client.get("/adapters", params=params)).json()
            walked += names(body)
            pages += 1
            assert len(body["adapters"]) <= 7
            if pages == 2:  # halfway: delete some tasks and add others, before and after the position
                for task in removed:
                    assert (await client.delete(f"/adapters/{task}")).status_code == 200
                for task in added:
                    assert (await client.post("/adapters", **upload_files(extra, task))).status_code == 201
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert len(walked) == len(set(walked)) and walked == sorted(walked)  # nothing twice, in order
    throughout = set(many) - removed
    assert throughout <= set(walked)  # everything there all along, exactly once
    assert "img03" in walked and "zzz" in walked and "aaa" not in walked  # what came or went: as the position says
    assert "img20" not in walked and "vid4" not in walked


async def test_prefix_and_modality_filter_and_page(many, make_settings, vit):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        body = (await client.get("/adapters", params={"prefix": "img1"})).json()
        assert names(body) == [f"img1{i}" for i in range(10)] and "next_cursor" not in body
        body = (await client.get("/adapters", params={"modality": "clip"})).json()
        assert names(body) == [f"vid{i}" for i in range(6)]
        assert all(a["modality"] == "clip" for a in body["adapters"])
        first = (await client.get("/adapters", params={"modality": "image", "limit": 25})).json()
        assert names(first) == many[:25] and first["next_cursor"]
        rest = (await client.get("/adapters", params={"modality": "image", "cursor": first["next_cursor"]})).json()
        assert names(rest) == many[25:30] and rest["next_cursor"] is None  # no empty last page
        exact = (await client.get("/adapters", params={"limit": 36})).json()
        assert len(exact["adapters"]) == 36 and exact["next_cursor"] is None
        assert (await client.get("/adapters", params={"prefix": "nothing", "limit": 5})).json() == {
            "adapters": [],
            "next_cursor": None,
        }


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "next_cursor of the previous page"),
        ({"cursor": encode_cursor("x")[:-3] + "!!!"}, "cursor"),
        ({"modality": "audio"}, "modality"),
        ({"prefix": "p" * 65}, "prefix"),
    ],
)
async def test_bad_paging_parameters_are_refused_with_a_clear_message(tasks_store, make_settings, vit, params, says):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        r = await client.get("/adapters", params=params)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and says in error["message"]


def test_cursors_are_opaque_and_round_trip():
    assert decode_cursor(encode_cursor("img.07-a")) == "img.07-a"
    assert decode_cursor(None) is None and encode_cursor(None) is None
    for bad in ["", "YWJj", "!!"]:  # "YWJj" is base64 of "abc": not a cursor
        with pytest.raises(ValueError, match="cursor"):
            decode_cursor(bad)


async def test_the_client_iterates_the_pages(many, make_settings, vit):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app):
        requests: list[httpx.Request] = []
        transport = httpx.ASGITransport(app=app)

        async def record(request: httpx.Request) -> None:
            requests.append(request)

        async with AsyncClient("http://testserver", transport=transport) as client:
            client._http.event_hooks["request"].append(record)
            got = [a.task async for a in client.iter_adapters(page_size=5)]
            assert got == many and len(requests) == 8  # 36 tasks, 5 a page
            assert [a.task for a in await client.list_adapters()] == many  # the old call: every task
            assert [a.task for a in await client.list_adapters(prefix="vid")] == many[30:]
            assert [a.task async for a in client.iter_adapters(modality="clip", page_size=4)] == many[30:]


def test_the_sync_client_iterates_pages_and_reads_a_server_from_before_paging():
    from adaptformer_client import Client
    from tests.client.conftest import adapter_info

    infos = [adapter_info(f"t{i:02d}", ["a", "b"]) for i in range(7)]
    seen: list[dict] = []

    def paged(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        start = int(decode_cursor(params["cursor"])[1:]) + 1 if "cursor" in params else 0
        page = infos[start : start + int(params["limit"])]
        more = start + len(page) < len(infos)
        return httpx.Response(
            200, json={"adapters": page, "next_cursor": encode_cursor(page[-1]["task"]) if more else None}
        )

    with Client("http://testserver", transport=httpx.MockTransport(paged)) as client:
        assert [a.task for a in client.iter_adapters(prefix="t", page_size=3)] == [i["task"] for i in infos]
    assert [p.get("cursor") for p in seen] == [None, encode_cursor("t02"), encode_cursor("t05")]
    assert all(p["limit"] == "3" and p["prefix"] == "t" and "modality" not in p for p in seen)

    def before_paging(request: httpx.Request) -> httpx.Response:  # ignores the parameters, answers everything
        return httpx.Response(200, json={"adapters": infos})

    with Client("http://testserver", transport=httpx.MockTransport(before_paging)) as client:
        assert len(client.list_adapters()) == 7
