"""Training jobs: a bounded queue, one job at a time in a worker process, records that survive a restart.

A job's folder (``<jobs_dir>/<id>/``) holds ``job.json`` (the record, replaced atomically on every change),
``params.json`` (what the worker reads), ``examples/`` (removed when the job ends), ``log.txt`` (the worker's
output) and, on success, ``adapter.safetensors``. The adapter is registered through the upload path (the checks of
``POST /adapters``, an atomic store write, hot in the bank, seen by replicas through the store); a job that fails
or is cancelled registers nothing. At start, a job the previous process left ``running`` is marked failed; one left
``registering`` is settled by whether its adapter version reached the store; ``queued`` ones run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from adaptformer.adapter_file import atomic_write
from adaptformer.embedded import EMBEDDED_NAME
from adaptformer_server.errors import ApiError, NotFound
from adaptformer_server.jobs.examples import ExamplesSummary
from adaptformer_server.jobs.worker import PREFIX
from adaptformer_server.repository.names import version_of
from adaptformer_server.runtime import Runtime
from adaptformer_server.services.adapters import Replacement
from adaptformer_server.settings import Settings

__all__ = ["TERMINAL", "JobManager", "QueueFull", "TrainParams", "register_adapter"]

log = logging.getLogger("adaptformer_server.jobs")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_ID_CHARS = frozenset("0123456789abcdef-j")


async def register_adapter(runtime: Runtime, data: bytes, task: str) -> Replacement:
    """The one place a trained adapter enters the server: the upload path, with all of its checks. Returns its
    ``Replacement`` (``.entry``, ``.previous``)."""
    return await runtime.adapters.upload(data, task)


class QueueFull(ApiError):
    status, code = 429, "too_many_jobs"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class JobConflict(ApiError):
    status, code = 409, "conflict"


@dataclass(frozen=True)
class TrainParams:
    """The knobs of a job (the ``adaptformer train`` flags of the same names)."""

    method: str = "adaptformer"
    bottleneck: int = 16
    scale: float = 0.5
    layers: str = "all"
    epochs: int = 20
    lr: float = 5e-3
    batch_size: int = 16
    frames: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_train_threads() -> int:
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else cores // 4


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def valid_job_id(job_id: str) -> bool:
    return job_id.startswith("j-") and len(job_id) <= 40 and set(job_id) <= _ID_CHARS


class Job:
    """One job's record and its change notifications (``version`` grows on every change)."""

    def __init__(self, record: dict[str, Any], folder: Path) -> None:
        self.record = record
        self.folder = folder
        self.version = 0
        self.changed = asyncio.Event()
        self.cancel_requested = False
        self.process: asyncio.subprocess.Process | None = None

    @property
    def id(self) -> str:
        return str(self.record["job"])

    @property
    def status(self) -> str:
        return str(self.record["status"])

    def view(self) -> dict[str, Any]:
        out = dict(self.record)
        if out["status"] == "running" and out.get("epoch_seconds") and out.get("epoch"):
            left = max(int(out["epochs"]) - int(out["epoch"]), 0)
            out["eta_s"] = round(left * float(out["epoch_seconds"]), 1)
        else:
            out["eta_s"] = 0.0 if out["status"] in TERMINAL else None
        return out


class JobManager:
    """Accepts, queues, runs, cancels and remembers training jobs of one server process.

    Args:
        settings: Server settings (the job settings, the backbone, the device).
        runtime: The runtime adapters are registered into.
        backbone: The prebuilt backbone the app serves, if any (the worker gets a pickled copy of it).
    """

    def __init__(self, settings: Settings, runtime: Runtime, backbone: nn.Module | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.backbone = backbone
        self.root = settings.jobs_dir or settings.store.with_name(settings.store.name + "-jobs")
        self.threads = settings.train_threads or default_train_threads()
        self.jobs: dict[str, Job] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._current: Job | None = None
        self._lock_fd: int | None = None
        self.unavailable: str | None = None  # why this process runs no jobs (another one owns jobs_dir)

    # -- life cycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Loads the records (settling what a previous process left unfinished) and starts the runner."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self._take_lock():
                return
        except OSError as e:  # serving goes on without training jobs
            self.unavailable = f"training jobs are off: cannot use the jobs folder {self.root}: {e}"
            log.warning("%s", self.unavailable)
            return
        for folder in sorted(self.root.iterdir()):
            path = folder / "job.json"
            if not (folder.is_dir() and valid_job_id(folder.name) and path.is_file()):
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                log.warning("job record %s unreadable: %s", path, e)
                continue
            job = Job(record, folder)
            self.jobs[job.id] = job
            if job.status == "running":
                self._finish(
                    job,
                    "failed",
                    error="the server stopped while this job was training; nothing was registered "
                    "(start it again with POST /tasks/{task}/train)",
                )
        for job in sorted(self.jobs.values(), key=lambda j: str(j.record["created"])):
            if job.status == "queued":
                self._queue.put_nowait(job.id)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run_forever(), name="adaptformer-jobs")

    def _take_lock(self) -> bool:
        """One live process per jobs folder: it alone settles, queues and runs the jobs recorded there (a lock the
        kernel drops when the process dies, so a restarted server takes over)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.unavailable = (
                f"training jobs are run by another server process that uses {self.root}; give each process its "
                "own jobs folder (ADAPTFORMER_JOBS_DIR) or send training requests to that one"
            )
            log.warning("%s", self.unavailable)
            return False
        self._lock_fd = fd
        return True

    async def stop(self) -> None:
        job = self._current
        if job is not None and job.process is not None:
            job.cancel_requested = True
            job.record["stop_reason"] = "the server stopped while this job was training; nothing was registered"
            await self._terminate(job.process)
        # Cancelled until it is done: a cancel that lands while an inner wait_for completes can be swallowed (the
        # runner then finishes its job and waits on the queue again), so one cancel() is not enough.
        while self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=1)
        if self._runner is not None and self._runner.done() and not self._runner.cancelled():
            with contextlib.suppress(Exception):
                self._runner.result()  # (retrieved, so no "exception never retrieved" warning)
        if job is not None and job.status not in TERMINAL:
            self._finish(job, "failed", error=job.record.get("stop_reason") or "the server stopped")
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the lock
            self._lock_fd = None

    # -- records --------------------------------------------------------------------------------------------
    def _save(self, job: Job) -> None:
        atomic_write(job.folder / "job.json", (json.dumps(job.record, indent=1) + "\n").encode())
        job.version += 1
        job.changed.set()
        job.changed = asyncio.Event()

    def _update(self, job: Job, **fields: Any) -> None:
        job.record.update(fields)
        self._save(job)

    def _finish(self, job: Job, status: str, **fields: Any) -> None:
        job.record.update(fields, status=status, finished=_now())
        self._save(job)
        shutil.rmtree(job.folder / "examples", ignore_errors=True)
        log.info("job %s (%s): %s%s", job.id, job.record["task"], status,
                 f": {fields['error']}" if fields.get("error") else "")  # fmt: skip
        self._prune()

    def _prune(self) -> None:
        done = sorted((j for j in self.jobs.values() if j.status in TERMINAL), key=lambda j: str(j.record["created"]))
        for job in done[: max(len(done) - self.settings.keep_jobs, 0)]:
            self.jobs.pop(job.id, None)
            shutil.rmtree(job.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id) if valid_job_id(job_id) else None
        if job is None:
            raise NotFound(f"no job {job_id[:60]!r}; GET /jobs lists them")
        return job

    def list(self) -> list[dict[str, Any]]:
        return [j.view() for j in sorted(self.jobs.values(), key=lambda j: str(j.record["created"]), reverse=True)]

    def queued(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status == "queued")

    # -- accepting ------------------------------------------------------------------------------------------
    def reserve(self) -> tuple[str, Path]:
        """A new job id and its folder, or 429 when the queue is full (checked before the examples are read)."""
        self.check_room()
        job_id = f"j-{secrets.token_hex(6)}"
        folder = self.root / job_id
        folder.mkdir(parents=True)
        return job_id, folder

    def check_room(self) -> None:
        waiting = self.queued()
        if waiting >= self.settings.train_queue:
            eta = self._current.view().get("eta_s") if self._current is not None else None
            retry = int(min(max(eta or 30, 5), 3600))
            raise QueueFull(
                f"{waiting} training jobs are waiting, the most this server queues (ADAPTFORMER_TRAIN_QUEUE); "
                "retry later",
                retry_after=retry,
            )

    def submit(self, job_id: str, folder: Path, task: str, params: TrainParams, examples: ExamplesSummary) -> Job:
        """Queues a job whose examples are unpacked and checked in ``folder/examples``."""
        self.check_room()
        record: dict[str, Any] = {
            "job": job_id,
            "task": task,
            "status": "queued",
            "created": _now(),
            "started": None,
            "finished": None,
            "params": params.to_dict(),
            "examples": examples.to_dict(),
            "epoch": 0,
            "epochs": params.epochs,
            "loss": None,
            "train_top1": None,
            "val_top1": None,
            "val_loss": None,
            "history": [],
            "error": None,
            "version": None,
            "log": "log.txt",
        }
        job = Job(record, folder)
        self.jobs[job_id] = job
        self._save(job)
        self._queue.put_nowait(job_id)
        log.info("job %s (%s) queued: %d examples in %d classes", job_id, task, examples.total, len(examples.classes))
        return job

    # -- cancelling -----------------------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in TERMINAL:
            return job
        if job.status == "registering":
            raise JobConflict(f"job {job_id} has trained and is registering its adapter; it can no longer be cancelled")
        job.cancel_requested = True
        if job.status == "queued":
            self._finish(job, "cancelled", error=None)
        elif job.process is not None:
            await self._terminate(job.process)
            await self._settled(job)
        return job

    async def _settled(self, job: Job, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while job.status not in TERMINAL and time.monotonic() < deadline:
            changed = job.changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)

    @staticmethod
    async def _terminate(process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    # -- events ---------------------------------------------------------------------------------------------
    async def watch(self, job_id: str, keepalive: float = 15.0) -> AsyncIterator[dict[str, Any] | None]:
        """The job's view now and after every change until it ends; ``None`` after ``keepalive`` s of quiet."""
        job = self.get(job_id)
        while True:
            changed = job.changed
            yield job.view()
            if job.status in TERMINAL:
                return
            try:
                await asyncio.wait_for(changed.wait(), keepalive)
            except asyncio.TimeoutError:
                yield None

    # -- running --------------------------------------------------------------------------------------------
    async def _run_forever(self) -> None:
        while not self.runtime.ready:  # the store and the backbone first
            if self.runtime.state == "failed":
                return  # the job routes answer 503 like every other route
            await asyncio.sleep(0.2)
        await self.settle_registering()
        while True:
            job_id = await self._queue.get()
            job = self.jobs.get(job_id)
            if job is None or job.status != "queued":
                continue
            self._current = job
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug here must not stop the queue
                log.exception("job %s failed unexpectedly", job.id)
                if job.status not in TERMINAL:
                    self._finish(job, "failed", error=f"internal error: {type(e).__name__}: {e}")
            finally:
                self._current = None

    def _backbone_source(self) -> dict[str, Any]:
        info = self.runtime.backbone
        assert info is not None
        if self.backbone is not None:
            path = self.root / "backbone.pt"
            if not path.exists():
                import torch

                tmp = path.with_suffix(".tmp")
                torch.save(self.backbone, tmp)
                tmp.replace(path)
            return {"name": info.name, "pickle": str(path)}
        name = self.settings.backbone
        weights = str(self.settings.weights) if self.settings.weights is not None else None
        return {"name": EMBEDDED_NAME if name == "embedded" else name, "weights": weights}

    async def _run(self, job: Job) -> None:
        params = {
            **job.record["params"],
            "job": job.id,
            "task": job.record["task"],
            "threads": self.threads,
            "nice": self.settings.train_nice,
            "device": self.settings.device,
            "backbone": await asyncio.to_thread(self._backbone_source),
        }
        atomic_write(job.folder / "params.json", json.dumps(params, indent=1).encode())
        self._update(job, status="running", started=_now())
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        with open(job.folder / "log.txt", "ab") as logfile:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "adaptformer_server.jobs.worker",
                str(job.folder),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=logfile,
                env=env,
                start_new_session=True,
                limit=1 << 20,
            )
        job.process = process
        self._update(job, worker_pid=process.pid)
        outcome: dict[str, Any] = {"done": None, "error": None}
        timed_out = False
        try:
            await asyncio.wait_for(self._follow(job, process, outcome), self.settings.train_timeout)
        except asyncio.TimeoutError:
            timed_out = True
            await self._terminate(process)
        finally:
            if process.returncode is None:
                await self._terminate(process)
            job.process = None
        if job.cancel_requested:
            reason = job.record.pop("stop_reason", None)
            if reason:
                self._finish(job, "failed", error=reason)
            else:
                self._finish(job, "cancelled", error=None)
            return
        if timed_out:
            self._finish(job, "failed", error=f"stopped after {self.settings.train_timeout:g} s (train_timeout)")
            return
        adapter = job.folder / "adapter.safetensors"
        done, error = outcome["done"], outcome["error"]
        if process.returncode != 0 or done is None or not adapter.is_file():
            why = error or f"the training worker exited with status {process.returncode}"
            self._finish(job, "failed", error=f"{why} (log: GET /jobs/{job.id}/log)")
            return
        data = await asyncio.to_thread(adapter.read_bytes)
        metrics = done.get("metrics") or {}
        self._update(
            job,
            status="registering",
            version=version_of(data),
            val_top1=metrics.get("val_top1", job.record.get("val_top1")),
            val_loss=metrics.get("val_loss", job.record.get("val_loss")),
            metrics=metrics,
        )
        try:
            result = await register_adapter(self.runtime, data, job.record["task"])
        except ApiError as e:
            self._finish(job, "failed", error=f"the trained adapter was refused: {e.message}")
            return
        except Exception as e:
            log.exception("job %s: registering failed", job.id)
            self._finish(job, "failed", error=f"registering the adapter failed: {type(e).__name__}: {e}")
            return
        self._finish(
            job,
            "succeeded",
            version=result.entry.version,
            previous_version=result.previous.version if result.previous else None,
        )

    async def _follow(self, job: Job, process: asyncio.subprocess.Process, outcome: dict[str, Any]) -> None:
        """Reads the worker's ``@job`` lines into the record (other output goes to the log) until it exits."""
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line.startswith(PREFIX):
                with open(job.folder / "log.txt", "a") as f:
                    f.write(line + "\n")
                continue
            try:
                event = json.loads(line[len(PREFIX) :])
            except ValueError:
                continue
            kind = event.pop("type", None)
            if kind == "epoch":
                epoch = int(event["epoch"])
                self._update(
                    job,
                    epoch=epoch,
                    loss=event.get("train_loss"),
                    train_top1=event.get("train_top1"),
                    val_top1=event.get("val_top1", job.record.get("val_top1")),
                    val_loss=event.get("val_loss", job.record.get("val_loss")),
                    epoch_seconds=round(float(event["seconds"]) / max(epoch, 1), 3),
                    history=[*job.record["history"], event],
                )
            elif kind == "loaded":
                self._update(job, data={k: event[k] for k in ("train", "val", "labels", "frames", "modality")})
            elif kind == "done":
                outcome["done"] = event
            elif kind == "error":
                outcome["error"] = str(event.get("message"))
        await process.wait()

    async def settle_registering(self) -> None:
        """Jobs a previous process left between training and registering: succeeded if their version is stored."""
        adapters = self.runtime.adapters
        store = adapters.store
        for job in list(self.jobs.values()):
            if job.status != "registering":
                continue
            task, version = job.record["task"], job.record.get("version")
            stored = False
            if store is not None and version:
                current = adapters.registry.current_version(task)
                stored = current == version or await asyncio.to_thread(store.has_version, task, version)
            if stored:
                self._finish(job, "succeeded", note="registered before the server stopped")
            else:
                self._finish(job, "failed", error="the server stopped before the adapter was registered; nothing was")
