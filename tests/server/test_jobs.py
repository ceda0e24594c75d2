"""Training jobs end to end in-process: a job on generated examples trains in a worker process, reaches a stated
accuracy, is registered through the upload path and answers /predict; cancel; the queue bound; admin only."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from adaptformer_server.app import create_app
from tests.server.jobs_support import example, examples_zip, labelled_fields
from tests.support import async_wait_until, serving

ADMIN = "jobs-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def _job(client: httpx.AsyncClient, job_id: str) -> dict:
    r = await client.get(f"/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


async def _ended(client: httpx.AsyncClient, job_id: str, timeout: float = 120) -> dict:
    async def done() -> dict | None:
        job = await _job(client, job_id)
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return await async_wait_until(done, f"job {job_id} to end", timeout=timeout, interval=0.2)


def _train(client: httpx.AsyncClient, task: str, data: bytes, headers: dict | None = None, **params: object):
    return client.post(
        f"/tasks/{task}/train",
        params=params,
        files={"examples": ("examples.zip", data, "application/zip")},
        headers=AUTH if headers is None else headers,
    )


async def test_a_job_trains_registers_and_the_task_answers(make_settings, vit, tmp_path):
    """20 generated images per class, 3 classes (12 held out): validation top-1 >= 0.9, then /predict answers."""
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs"), backbone=vit)
    async with serving(app) as client:
        r = await _train(client, "colours", examples_zip(20), epochs=15)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["job"].startswith("j-")
        assert r.headers["location"] == f"/jobs/{body['job']}"
        assert body["examples"]["classes"] == {"blue": 20, "green": 20, "red": 20}
        seen: list[dict] = []  # the events while it trains: one per change, then the end
        async with asyncio.timeout(120):
            async with client.stream("GET", f"/jobs/{body['job']}/events", headers=AUTH) as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                async for line in events.aiter_lines():
                    if line.startswith("data: ") and line != "data: {}":
                        seen.append(json.loads(line[6:]))
        assert seen[0]["status"] in ("queued", "running") and seen[-1]["status"] == "succeeded"
        assert [s["epoch"] for s in seen if s["status"] == "running"][-1] == 15
        job = await _ended(client, body["job"])
        assert job["status"] == "succeeded", job
        assert job["epoch"] == 15 and job["val_top1"] >= 0.9 and job["eta_s"] == 0.0
        assert job["data"]["train"] == 48 and job["data"]["val"] == 12
        assert len(job["history"]) == 15 and job["loss"] is not None
        info = (await client.get("/adapters/colours")).json()
        assert info["version"] == job["version"] and info["labels"] == ["blue", "green", "red"]
        assert body["job"] in info["description"]
        # what predict keys can read names the job, never the server's folders
        assert str(tmp_path) not in json.dumps(info) and body["job"] in info["metrics"]["data"]
        hits = 0
        for label in ("red", "green", "blue"):
            for i in range(100, 104):  # images the job never saw
                files = {"image": ("x.png", example(label, i), "image/png")}
                answer = (await client.post("/predict", params={"task": "colours"}, files=files)).json()
                hits += answer["predictions"][0][0]["label"] == label
        assert hits >= 10, hits  # of 12
        # the events of a finished job: its state, then the end
        events = await client.get(f"/jobs/{body['job']}/events", headers=AUTH)
        chunks = [c for c in events.text.split("\n\n") if c.strip()]
        assert chunks[-1].startswith("event: end")
        assert json.loads(chunks[-2].split("data: ", 1)[1])["status"] == "succeeded"
        listed = (await client.get("/jobs", headers=AUTH)).json()["jobs"]
        assert [j["job"] for j in listed] == [body["job"]]
        assert (await client.get(f"/jobs/{body['job']}/log", headers=AUTH)).status_code == 200


async def test_image_and_label_fields(make_settings, vit, tmp_path):
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs"), backbone=vit)
    async with serving(app) as client:
        r = await client.post(
            "/tasks/rb/train", params={"method": "linear", "epochs": 3}, files=labelled_fields(4), headers=AUTH
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["examples"]["classes"] == {"blue": 4, "red": 4} and body["params"]["method"] == "linear"
        folder = tmp_path / "jobs" / body["job"] / "examples"
        assert sorted(p.name for p in folder.iterdir()) == ["blue", "red"]
        await client.delete(f"/jobs/{body['job']}", headers=AUTH)
        assert (await _ended(client, body["job"]))["status"] == "cancelled"


@pytest.mark.slow
async def test_a_linear_probe_job(make_settings, vit, tmp_path):
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs"), backbone=vit)
    async with serving(app) as client:
        r = await client.post(
            "/tasks/rb/train", params={"method": "linear", "epochs": 3}, files=labelled_fields(4), headers=AUTH
        )
        job = await _ended(client, r.json()["job"])
        assert job["status"] == "succeeded", job
        assert (await client.get("/adapters/rb")).json()["method"] == "linear"


async def test_cancel_a_running_job_registers_nothing(make_settings, vit, tmp_path):
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs"), backbone=vit)
    async with serving(app) as client:
        r = await _train(client, "slow", examples_zip(10), epochs=5000)
        assert r.status_code == 400  # over train_max_epochs
        r = await _train(client, "slow", examples_zip(10), epochs=200, batch_size=1)
        job_id = r.json()["job"]

        async def training() -> bool:  # the worker process runs (mid-epoch cancels: test_jobs_restart's slow tests)
            return (await _job(client, job_id)).get("worker_pid") is not None

        await async_wait_until(training, "the worker to start", timeout=120, interval=0.1)
        r = await client.delete(f"/jobs/{job_id}", headers=AUTH)
        assert r.status_code == 200
        job = await _ended(client, job_id)
        assert job["status"] == "cancelled" and job["version"] is None
        assert (await client.get("/adapters/slow")).status_code == 404
        assert not (tmp_path / "jobs" / job_id / "examples").exists()
        # cancelling again is a no-op
        assert (await client.delete(f"/jobs/{job_id}", headers=AUTH)).json()["status"] == "cancelled"


async def test_a_full_queue_answers_429_with_retry_after(make_settings, vit, tmp_path):
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs", train_queue=1), backbone=vit)
    data = examples_zip(3)
    async with serving(app) as client:
        first = (await _train(client, "a", data, epochs=200, batch_size=1)).json()["job"]

        async def running() -> bool:
            return (await _job(client, first))["status"] == "running"

        await async_wait_until(running, "the first job to run", timeout=60, interval=0.1)
        second = await _train(client, "b", data)
        assert second.status_code == 202
        third = await _train(client, "c", data)
        assert third.status_code == 429, third.text
        assert int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["code"] == "too_many_jobs"
        # the queued one cancels at once, the running one after its worker stops
        assert (await client.delete(f"/jobs/{second.json()['job']}", headers=AUTH)).json()["status"] == "cancelled"
        await client.delete(f"/jobs/{first}", headers=AUTH)
        assert (await _ended(client, first))["status"] == "cancelled"
        assert sorted(p.name for p in (tmp_path / "jobs").iterdir() if p.name.startswith("j-")) == sorted(
            [first, second.json()["job"]]
        )


async def test_admin_only(make_settings, vit, tmp_path):
    app = create_app(
        make_settings(admin_key=ADMIN, api_keys="predict-key-0123456789", jobs_dir=tmp_path / "j"), backbone=vit
    )
    async with serving(app) as client:
        data = examples_zip(2)
        assert (await _train(client, "t", data, headers={})).status_code == 401
        r = await _train(client, "t", data, headers={"Authorization": "Bearer predict-key-0123456789"})
        assert r.status_code == 403
        for path in ("/jobs", "/jobs/j-000000000000", "/jobs/j-000000000000/events"):
            assert (await client.get(path)).status_code == 401
        assert (await client.delete("/jobs/j-000000000000")).status_code == 401
        assert (await client.get("/jobs/j-000000000000", headers=AUTH)).status_code == 404
        assert not [p for p in (tmp_path / "j").iterdir() if p.name.startswith("j-")]


@pytest.mark.parametrize("task", ["../x", "a b", ".hidden"])
async def test_bad_task_names(make_settings, vit, tmp_path, task):
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs"), backbone=vit)
    async with serving(app) as client:
        r = await _train(client, task, examples_zip(2))
        assert r.status_code in (400, 404), r.text


@pytest.mark.slow
async def test_a_clip_job(make_settings, vit, tmp_path):
    """GIF clips train a clip task that answers a clip."""
    from tests.server.jobs_support import zip_of
    from tests.support import gif

    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs"), backbone=vit)
    clips = {f"{c}/{i}.gif": gif(4, seed=10 * k + i) for k, c in enumerate(("left", "right")) for i in range(4)}
    async with serving(app) as client:
        r = await _train(client, "moves", zip_of(clips), epochs=2)
        job = await _ended(client, r.json()["job"])
        assert job["status"] == "succeeded", job
        info = (await client.get("/adapters/moves")).json()
        assert info["modality"] == "clip" and info["frames"] == 4
        files = {"image": ("c.gif", gif(4, seed=99), "image/gif")}
        answer = await client.post("/predict", params={"task": "moves"}, files=files)
        assert answer.status_code == 200, answer.text


async def test_a_job_past_train_timeout_fails_and_registers_nothing(make_settings, vit, tmp_path):
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs", train_timeout=0.5), backbone=vit)
    async with serving(app) as client:
        job = await _ended(client, (await _train(client, "late", examples_zip(3))).json()["job"])
        assert job["status"] == "failed" and "train_timeout" in job["error"]
        assert (await client.get("/adapters/late")).status_code == 404
