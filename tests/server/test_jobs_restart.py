"""Job records survive a restart: a job the previous process left training is marked failed with the reason and
nothing is registered; one left registering is settled by the store; queued ones run again."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from adaptformer_server.app import create_app
from tests.server.jobs_support import examples_zip
from tests.support import ServerProcess, async_wait_until, embedded_backbone, serving, wait_until

ADMIN = "jobs-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _record(folder: Path, job_id: str, task: str, status: str, **extra: object) -> None:
    (folder / job_id).mkdir(parents=True)
    record = {"job": job_id, "task": task, "status": status, "created": f"2026-01-01T00:00:0{len(extra)}Z",
              "started": None, "finished": None, "params": {"method": "adaptformer", "epochs": 2, "bottleneck": 4,
              "scale": 0.5, "layers": "all", "lr": 0.005, "batch_size": 16, "frames": None, "val_fraction": 0.2,
              "seed": 0, "description": ""}, "examples": {}, "epoch": 1, "epochs": 2, "history": [], "error": None,
              "version": None, **extra}  # fmt: skip
    (folder / job_id / "job.json").write_text(json.dumps(record))


async def test_records_left_by_a_dead_server_are_settled(make_settings, vit, tmp_path):
    jobs = tmp_path / "jobs"
    _record(jobs, "j-000000000001", "alpha", "running")
    _record(jobs, "j-000000000002", "beta", "registering", version="0123456789ab")
    _record(jobs, "j-000000000003", "gamma", "succeeded", version="0123456789ab")
    (jobs / "j-000000000001" / "adapter.safetensors").write_bytes(b"half written")
    app = create_app(make_settings(admin_key=ADMIN, jobs_dir=jobs), backbone=vit)
    async with serving(app) as client:

        async def settled() -> dict | None:
            listed = {j["job"]: j for j in (await client.get("/jobs", headers=AUTH)).json()["jobs"]}
            return listed if listed["j-000000000002"]["status"] != "registering" else None

        listed = await async_wait_until(settled, "the registering job to be settled")
        assert listed["j-000000000001"]["status"] == "failed"
        assert "server stopped while this job was training" in listed["j-000000000001"]["error"]
        assert listed["j-000000000002"]["status"] == "failed"
        assert listed["j-000000000003"]["status"] == "succeeded"
        assert (await client.get("/adapters")).json()["adapters"] == []
    # and the records say so on disk
    assert json.loads((jobs / "j-000000000001" / "job.json").read_text())["status"] == "failed"


@pytest.mark.slow
async def test_a_server_stopping_mid_job_fails_it_and_registers_nothing(make_settings, vit, tmp_path):
    settings = make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs")
    async with serving(create_app(settings, backbone=vit)) as client:
        files = {"examples": ("x.zip", examples_zip(6), "application/zip")}
        r = await client.post("/tasks/t/train", files=files, headers=AUTH, params={"epochs": 200, "batch_size": 1})
        job_id = r.json()["job"]

        async def training() -> bool:
            return (await client.get(f"/jobs/{job_id}", headers=AUTH)).json()["epoch"] >= 1

        await async_wait_until(training, "the first epoch", timeout=120, interval=0.2)
    async with serving(create_app(settings, backbone=vit)) as client:
        job = (await client.get(f"/jobs/{job_id}", headers=AUTH)).json()
        assert job["status"] == "failed" and "server stopped" in job["error"]
        assert (await client.get("/adapters/t")).status_code == 404


@pytest.mark.slow
def test_a_killed_server_process_leaves_a_failed_record(tmp_path):
    """SIGKILL mid-job (no shutdown code runs): the worker stops on its own, the next start marks the job failed."""
    embedded_backbone(tmp_path / "backbone.safetensors")
    store, jobs = tmp_path / "store", tmp_path / "jobs"
    store.mkdir()
    flags = ["--weights", tmp_path / "backbone.safetensors", "--store", store, "--no-seed-demo", "--jobs-dir", jobs,
             "--threads", "1"]  # fmt: skip
    env = {"ADAPTFORMER_ADMIN_KEY": ADMIN}
    with ServerProcess(flags, log=tmp_path / "a.log", env=env) as server:
        files = {"examples": ("x.zip", examples_zip(6), "application/zip")}
        r = httpx.post(
            f"{server.url}/tasks/t/train", files=files, headers=AUTH, params={"epochs": 200, "batch_size": 1}
        )
        job_id = r.json()["job"]
        wait_until(lambda: httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH).json()["epoch"] >= 1, "an epoch",
                   timeout=120, interval=0.3)  # fmt: skip
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
    record = json.loads((jobs / job_id / "job.json").read_text())
    assert record["status"] == "running"
    # the orphaned worker notices (its pipe breaks at the next epoch) and exits without writing an adapter
    wait_until(lambda: not Path(f"/proc/{record['worker_pid']}").exists(), "the orphaned worker to exit")
    with ServerProcess(flags, log=tmp_path / "b.log", env=env) as server:
        job = httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH).json()
        assert job["status"] == "failed" and "server stopped" in job["error"]
        assert httpx.get(f"{server.url}/adapters/t").status_code == 404


async def test_one_process_per_jobs_folder(make_settings, vit, tmp_path):
    """A second server on the same jobs folder (replicas sharing a disk) runs no jobs and says why (503); the
    first one's records are untouched, and the folder is the next process's once the first one stops."""
    settings = make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs")
    _record(tmp_path / "jobs", "j-000000000001", "alpha", "running")
    async with serving(create_app(settings, backbone=vit)) as first:
        assert (await first.get("/jobs/j-000000000001", headers=AUTH)).json()["status"] == "failed"
        async with serving(create_app(settings, backbone=vit)) as second:
            r = await second.get("/jobs", headers=AUTH)
            assert r.status_code == 503 and "ADAPTFORMER_JOBS_DIR" in r.json()["error"]["message"]
            assert "retry-after" in r.headers
    async with serving(create_app(settings, backbone=vit)) as third:
        assert (await third.get("/jobs", headers=AUTH)).status_code == 200
