"""``Client.train`` and ``Job`` against a fake of the jobs API (httpx.MockTransport): the examples zipped from a
folder, the knobs as query parameters, waiting with progress, cancel, a failed job, and the CLI's ``train``."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import httpx
import pytest

from adaptformer_client import AsyncClient, Client, JobFailedError, PermissionDeniedError
from adaptformer_client.cli import main
from adaptformer_client.errors import APITimeoutError
from adaptformer_client.jobs import AsyncJob, Job
from adaptformer_client.types import JobInfo
from tests.client.conftest import URL, parse_multipart


class FakeJobs:
    """Jobs that advance one epoch per poll; ``fail_at`` makes a job fail at that epoch."""

    def __init__(self, epochs: int = 3, fail_at: int | None = None) -> None:
        self.epochs = epochs
        self.fail_at = fail_at
        self.jobs: dict[str, dict] = {}
        self.requests: list[httpx.Request] = []
        self.zips: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path.startswith("/tasks/"):
            if request.headers.get("authorization") != "Bearer admin-key":
                return httpx.Response(403, json={"error": {"code": "forbidden", "message": "needs the admin key"}})
            (part,) = [p for p in parse_multipart(request) if p[0] == "examples"]
            self.zips.append(part[3])
            job_id = f"j-{len(self.jobs):012x}"
            epochs = int(request.url.params.get("epochs", self.epochs))
            self.jobs[job_id] = {"job": job_id, "task": path.split("/")[2], "status": "queued", "created": "now",
                                 "epoch": 0, "epochs": epochs, "params": dict(request.url.params)}  # fmt: skip
            return httpx.Response(202, json=self.jobs[job_id])
        if path == "/jobs":
            return httpx.Response(200, json={"jobs": list(self.jobs.values())})
        job = self.jobs.get(path.split("/")[2])
        if job is None:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such job"}})
        if request.method == "DELETE":
            if job["status"] in ("queued", "running"):
                job["status"] = "cancelled"
            return httpx.Response(200, json=job)
        if job["status"] in ("queued", "running"):
            job["status"] = "running"
            job["epoch"] += 1
            job.update(loss=1.0 / job["epoch"], val_top1=0.5 + 0.1 * job["epoch"], eta_s=float(job["epochs"]))
            if self.fail_at == job["epoch"]:
                job.update(status="failed", error="the training worker exited with status 1")
            elif job["epoch"] >= job["epochs"]:
                job.update(status="succeeded", version="0123456789ab", eta_s=0.0)
        return httpx.Response(200, json=job)


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for label in ("ok", "bad"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_bytes(b"\x89PNG fake " + label.encode())
    (root / ".DS_Store").write_bytes(b"x")
    return root


def _client(fake: FakeJobs, key: str = "admin-key") -> Client:
    return Client(URL, key, transport=httpx.MockTransport(fake), sleep=lambda s: None)


def test_train_zips_a_folder_and_waits_with_progress(tmp_path, capsys):
    fake = FakeJobs()
    with _client(fake) as client:
        job = client.train("defects", _folder(tmp_path), epochs=4, method="linear", lr=0.01)
        assert job.id == "j-000000000000" and job.info.status == "queued"
        info = job.wait(progress=True)
    assert info.status == "succeeded" and info.epoch == 4 and info.version == "0123456789ab"
    names = sorted(zipfile.ZipFile(io.BytesIO(fake.zips[0])).namelist())
    assert names == [f"{c}/{i}.png" for c in ("bad", "ok") for i in range(3)]  # hidden files left out
    params = fake.requests[0].url.params
    assert params["epochs"] == "4" and params["method"] == "linear" and params["lr"] == "0.01"
    assert "bottleneck" not in params  # unset knobs: the server's defaults
    assert "4/4" in capsys.readouterr().err  # the tqdm bar


def test_a_zip_path_is_sent_as_it_is_and_failure_raises(tmp_path):
    data = tmp_path / "x.zip"
    data.write_bytes(b"PK zip bytes")
    fake = FakeJobs(fail_at=2)
    with _client(fake) as client:
        job = client.train("defects", data)
        with pytest.raises(JobFailedError, match="exited with status 1") as failed:
            job.wait()
    assert fake.zips == [b"PK zip bytes"]
    assert failed.value.job.status == "failed"


def test_cancel_status_and_listing(tmp_path):
    fake = FakeJobs(epochs=100)
    with _client(fake) as client:
        job = client.train("defects", b"PK")
        assert job.status().status == "running"
        assert job.cancel().status == "cancelled"
        with pytest.raises(JobFailedError, match="cancelled"):
            job.wait()
        assert [j.job for j in client.jobs()] == [job.id]
        assert client.job(job.id).info.status == "cancelled"


def test_train_needs_the_admin_key():
    with _client(FakeJobs(), key="predict-key") as client, pytest.raises(PermissionDeniedError):
        client.train("defects", b"PK")


async def test_async_train(tmp_path):
    fake = FakeJobs()

    async def no_sleep(s: float) -> None:
        return None

    async with AsyncClient(URL, "admin-key", transport=httpx.MockTransport(fake), sleep=no_sleep) as client:
        job = await client.train("defects", _folder(tmp_path), epochs=2)
        info = await job.wait()
    assert info.status == "succeeded" and fake.requests[0].url.params["epochs"] == "2"


def test_cli_train(tmp_path, capsys):
    fake = FakeJobs()
    code = main(
        [
            "--url",
            URL,
            "--api-key",
            "admin-key",
            "train",
            "defects",
            str(_folder(tmp_path)),
            "--epochs",
            "2",
            "--no-progress",
        ],
        transport=httpx.MockTransport(fake),
    )
    out = capsys.readouterr().out
    assert code == 0 and "defects  succeeded" in out and "version 0123456789ab" in out
    assert fake.requests[0].url.params["epochs"] == "2"
    assert main(["--url", URL, "--api-key", "admin-key", "jobs"], transport=httpx.MockTransport(fake)) == 0
    assert "succeeded" in capsys.readouterr().out


@pytest.mark.slow
def test_train_against_a_real_server(tmp_path):
    """The client on a real server process: a folder trained into a task that then answers."""
    from tests.server.jobs_support import example
    from tests.support import live_server

    root = tmp_path / "colours"
    for label in ("red", "blue"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            (root / label / f"{i}.png").write_bytes(example(label, i))
    key = "admin-key-0123456789abc"
    with live_server(tmp_path, lambda vit: {}, "--admin-key", key) as url, Client(url, key) as client:
        job = client.train("colours", root, epochs=3)
        info = job.wait(progress=False, timeout=300, interval=0.5)
        assert info.status == "succeeded" and info.epoch == 3 and info.val_top1 is not None
        answer = client.predict("colours", example("red", 60))
        assert answer.top.label in ("red", "blue") and answer.version == info.version
        assert [j.job for j in client.jobs()] == [job.id]


def _running(epoch: int = 1) -> JobInfo:
    return JobInfo(job="j-1", task="t", status="running", created="2026-01-01T00:00:00Z", epoch=epoch, epochs=9)


def test_wait_gives_up_at_its_timeout_and_leaves_the_job_running():
    """Sync and async alike: past ``timeout`` wait raises APITimeoutError naming the job; nothing is cancelled."""
    cancelled: list[str] = []
    polls: list[int] = []

    def status(job_id: str) -> JobInfo:
        polls.append(1)
        return _running(len(polls))

    job = Job(_running(), status, lambda j: cancelled.append(j) or _running(), sleep=lambda s: None)
    with pytest.raises(APITimeoutError, match="job j-1 still running after 0 s"):
        job.wait(timeout=0)
    assert polls and not cancelled and job.info.epoch == len(polls)

    async def astatus(job_id: str) -> JobInfo:
        return _running(3)

    async def asleep(s: float) -> None:
        return None

    async def acancel(job_id: str) -> JobInfo:
        raise AssertionError("wait must not cancel")

    ajob = AsyncJob(_running(), astatus, acancel, asleep)
    with pytest.raises(APITimeoutError, match="job j-1 still running after 0 s"):
        asyncio.run(ajob.wait(timeout=0))
    assert ajob.info.epoch == 3
