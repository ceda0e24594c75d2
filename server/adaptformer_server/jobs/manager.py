"""Training jobs: a bounded queue, one job at a time in a worker process, records that survive a restart.

A job's folder (``<jobs_dir>/<id>/``) holds ``job.json`` (the record, replaced atomically on every change),
``params.json`` (what the worker reads), ``examples/`` (removed when the job ends), ``log.txt`` (the worker's
output) and, on success, ``adapter.safetensors``. The adapter is registered through the upload path (the checks of
``POST /adapters``, an atomic store write, hot in the bank, seen by replicas through the store); a job that fails
or is cancelled registers nothing. At start, a job the previous process left ``running`` is marked failed; one left
``registering`` is settled by whether its adapter version reached the store; ``queued`` ones run again.

A job's status changes only through :meth:`JobManager.move`, by the table of :mod:`adaptformer_server.jobs.record`;
the runner checks after every wait that its job is still ``running`` (a cancel or a stop moved it on meanwhile)
before it goes further, so a cancelled job never starts training, never registers, and never changes status again.
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
from pathlib import Path
from typing import Any

from torch import nn

from adaptformer.atomic import atomic_write
from adaptformer.embedded import EMBEDDED_NAME
from adaptformer_server.errors import ApiError, Conflict, NotFound
from adaptformer_server.jobs.examples import ExamplesSummary
from adaptformer_server.jobs.knobs import TrainKnobs
from adaptformer_server.jobs.record import TERMINAL, TRANSITIONS, JobRecord, JobStatus
from adaptformer_server.jobs.worker import PREFIX
from adaptformer_server.repository.names import version_of
from adaptformer_server.runtime import Runtime
from adaptformer_server.services.adapters import Replacement
from adaptformer_server.settings import Settings

__all__ = ["JobManager", "QueueFull", "register_adapter"]

log = logging.getLogger("adaptformer_server.jobs")

_ID_CHARS = frozenset("0123456789abcdef-j")
# Why a cancel is refused, by the status it found
_NOT_CANCELLABLE = {
    "registering": "has trained and is registering its adapter",
    "succeeded": "has succeeded and registered its adapter (DELETE /adapters/{task} removes it)",
    "failed": "has failed; nothing was registered",
}


async def register_adapter(runtime: Runtime, data: bytes, task: str) -> Replacement:
    """The one place a trained adapter enters the server: the upload path, with all of its checks. Returns its
    ``Replacement`` (``.entry``, ``.previous``)."""
    return await runtime.adapters.upload(data, task)


class QueueFull(ApiError):
    status, code = 429, "too_many_jobs"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def default_train_threads() -> int:
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else cores // 4


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def valid_job_id(job_id: str) -> bool:
    return job_id.startswith("j-") and len(job_id) <= 40 and set(job_id) <= _ID_CHARS


class Job:
    """One job: its record (replaced on every change, ``version`` counts them), its folder, change notifications
    and, while it trains, its worker process."""

    def __init__(self, record: JobRecord, folder: Path) -> None:
        self.record = record
        self.folder = folder
        self.version = 0
        self.changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def id(self) -> str:
        return self.record.job

    @property
    def status(self) -> JobStatus:
        return self.record.status

    def view(self) -> dict[str, Any]:
        """The record as ``GET /jobs/{id}`` shows it, with ``eta_s``."""
        out = self.record.to_dict()
        r = self.record
        if r.status == "running" and r.epoch_seconds and r.epoch:
            out["eta_s"] = round(max(r.epochs - r.epoch, 0) * r.epoch_seconds, 1)
        else:
            out["eta_s"] = 0.0 if r.status in TERMINAL else None
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
        # Jobs whose examples are being received and unpacked: they count against the queue (so does their disk)
        self._receiving: set[str] = set()
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
                record = JobRecord.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                log.warning("job record %s unreadable: %s", path, e)
                continue
            job = Job(record, folder)
            self.jobs[job.id] = job
            if job.status == "running":
                self.move(
                    job,
                    "failed",
                    error="the server stopped while this job was training; nothing was registered "
                    "(start it again with POST /tasks/{task}/train)",
                )
        for job in sorted(self.jobs.values(), key=lambda j: j.record.created):
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
        if job is not None and job.status == "running":
            self.move(job, "failed", error="the server stopped while this job was training; nothing was registered")
            if job.process is not None:
                await self._terminate(job.process)
        # Cancelled until it is done: a cancel that lands while an inner wait_for completes can be swallowed (the
        # runner then finishes its job and waits on the queue again), so one cancel() is not enough.
        while self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=1)
        if self._runner is not None and self._runner.done() and not self._runner.cancelled():
            with contextlib.suppress(Exception):
                self._runner.result()  # (retrieved, so no "exception never retrieved" warning)
        if job is not None and job.status == "registering":
            self.move(job, "failed", error="the server stopped while this job registered its adapter")
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the lock
            self._lock_fd = None

    # -- records --------------------------------------------------------------------------------------------
    def _save(self, job: Job, record: JobRecord) -> None:
        """The one place a record changes: written to ``job.json`` (atomically), then watchers are told."""
        atomic_write(job.folder / "job.json", record.to_json())
        job.record = record
        job.version += 1
        job.changed.set()
        job.changed = asyncio.Event()

    def move(self, job: Job, status: JobStatus, **fields: Any) -> None:
        """Moves a job to ``status`` with ``fields``, if ``TRANSITIONS`` allows it; a job that ends gets its
        ``finished`` time and loses its examples.

        Raises:
            IllegalTransition: a move the table does not allow (a bug of the caller).
        """
        ends = status in TERMINAL
        if ends:
            fields["finished"] = _now()
        self._save(job, job.record.moved(status, **fields))
        if ends:
            shutil.rmtree(job.folder / "examples", ignore_errors=True)
            error = job.record.error
            log.info("job %s (%s): %s%s", job.id, job.record.task, status, f": {error}" if error else "")
            self._prune()

    def _progress(self, job: Job, **fields: Any) -> None:
        """Records a running job's progress (none once it has moved on: a worker's last lines after a cancel)."""
        if job.status == "running":
            self._save(job, job.record.updated(**fields))

    def _prune(self) -> None:
        done = sorted((j for j in self.jobs.values() if j.status in TERMINAL), key=lambda j: j.record.created)
        for job in done[: max(len(done) - self.settings.keep_jobs, 0)]:
            self.jobs.pop(job.id, None)
            shutil.rmtree(job.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id) if valid_job_id(job_id) else None
        if job is None:
            raise NotFound(f"no job {job_id[:60]!r}; GET /jobs lists them")
        return job

    def list(self) -> list[dict[str, Any]]:
        return [j.view() for j in sorted(self.jobs.values(), key=lambda j: j.record.created, reverse=True)]

    def queued(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status == "queued")

    # -- accepting ------------------------------------------------------------------------------------------
    def reserve(self) -> tuple[str, Path]:
        """A new job id and its folder, or 429 when the queue is full (checked before the examples are read).

        Until :meth:`submit` or :meth:`release`, the job counts as waiting: examples being received and unpacked
        are bounded by the queue size as queued jobs are (their bytes on disk too).
        """
        self.check_room()
        job_id = f"j-{secrets.token_hex(6)}"
        folder = self.root / job_id
        folder.mkdir(parents=True)
        self._receiving.add(job_id)
        return job_id, folder

    def release(self, job_id: str) -> None:
        """A reserved job that will not be submitted (its examples were refused)."""
        self._receiving.discard(job_id)

    def check_room(self, job_id: str | None = None) -> None:
        waiting = self.queued() + len(self._receiving - {job_id})
        if waiting >= self.settings.train_queue:
            eta = self._current.view().get("eta_s") if self._current is not None else None
            retry = int(min(max(eta or 30, 5), 3600))
            raise QueueFull(
                f"{waiting} training jobs are waiting (queued, or their examples being received), the most this "
                "server queues (ADAPTFORMER_TRAIN_QUEUE); retry later",
                retry_after=retry,
            )

    def submit(
        self, job_id: str, folder: Path, task: str, knobs: TrainKnobs, examples: ExamplesSummary, description: str
    ) -> Job:
        """Queues a job whose examples are unpacked and checked in ``folder/examples``, and whose adapter (with
        ``description``) passed the upload checks (:mod:`adaptformer_server.jobs.plan`)."""
        self.check_room(job_id)
        record = JobRecord(
            job=job_id,
            task=task,
            status="queued",
            created=_now(),
            params=knobs,
            epochs=knobs.epochs,
            examples=examples.to_dict(),
            description=description,
        )
        job = Job(record, folder)
        self.jobs[job_id] = job
        self._save(job, record)
        self._queue.put_nowait(job_id)
        self._receiving.discard(job_id)
        log.info("job %s (%s) queued: %d examples in %d classes", job_id, task, examples.total, len(examples.classes))
        return job

    # -- cancelling -----------------------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> Job:
        """Cancels a job: a queued one at once, a running one's worker is stopped before this returns; nothing is
        registered. Cancelling a cancelled job again changes nothing.

        Raises:
            NotFound: no such job.
            Conflict: the job can no longer be cancelled (registering, or it has ended otherwise).
        """
        job = self.get(job_id)
        if job.status == "cancelled":
            return job
        if "cancelled" not in TRANSITIONS[job.status]:
            raise Conflict(f"job {job_id} {_NOT_CANCELLABLE[job.status]}; it can no longer be cancelled")
        self.move(job, "cancelled")
        if job.process is not None:
            await self._terminate(job.process)
        return job

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
                if job.status in ("running", "registering"):
                    self.move(job, "failed", error=f"internal error: {type(e).__name__}: {e}")
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
        """Trains a queued job in a worker process and registers its adapter; after every wait it goes on only
        while the job is still ``running``."""
        self.move(job, "running", started=_now())
        backbone = await asyncio.to_thread(self._backbone_source)
        if job.status != "running":
            return
        params = {
            "knobs": job.record.params.model_dump(),
            "description": job.record.description,
            "job": job.id,
            "task": job.record.task,
            "threads": self.threads,
            "nice": self.settings.train_nice,
            "device": self.settings.device,
            "backbone": backbone,
        }
        atomic_write(job.folder / "params.json", json.dumps(params, indent=1).encode())
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
        outcome: dict[str, Any] = {"done": None, "error": None}
        timed_out = False
        try:
            if job.status == "running":  # not cancelled while the worker started
                self._progress(job, worker_pid=process.pid)
                await asyncio.wait_for(self._follow(job, process, outcome), self.settings.train_timeout)
        except asyncio.TimeoutError:
            timed_out = True
        finally:
            await self._terminate(process)
            job.process = None
        if job.status != "running":
            return
        if timed_out:
            self.move(job, "failed", error=f"stopped after {self.settings.train_timeout:g} s (train_timeout)")
            return
        adapter = job.folder / "adapter.safetensors"
        done, error = outcome["done"], outcome["error"]
        if process.returncode != 0 or done is None or not adapter.is_file():
            why = error or f"the training worker exited with status {process.returncode}"
            self.move(job, "failed", error=f"{why} (log: GET /jobs/{job.id}/log)")
            return
        data = await asyncio.to_thread(adapter.read_bytes)
        if job.status != "running":
            return
        metrics = done.get("metrics") or {}
        self.move(
            job,
            "registering",
            version=version_of(data),
            val_top1=metrics.get("val_top1", job.record.val_top1),
            val_loss=metrics.get("val_loss", job.record.val_loss),
            metrics=metrics,
        )
        try:
            result = await register_adapter(self.runtime, data, job.record.task)
        except ApiError as e:
            self.move(job, "failed", error=f"the trained adapter was refused: {e.message}")
            return
        except Exception as e:
            log.exception("job %s: registering failed", job.id)
            self.move(job, "failed", error=f"registering the adapter failed: {type(e).__name__}: {e}")
            return
        self.move(
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
                record = job.record
                self._progress(
                    job,
                    epoch=epoch,
                    loss=event.get("train_loss"),
                    train_top1=event.get("train_top1"),
                    val_top1=event.get("val_top1", record.val_top1),
                    val_loss=event.get("val_loss", record.val_loss),
                    epoch_seconds=round(float(event["seconds"]) / max(epoch, 1), 3),
                    history=[*record.history, event],
                )
            elif kind == "loaded":
                self._progress(job, data={k: event[k] for k in ("train", "val", "labels", "frames", "modality")})
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
            task, version = job.record.task, job.record.version
            stored = False
            if store is not None and version:
                current = adapters.registry.current_version(task)
                stored = current == version or await asyncio.to_thread(store.has_version, task, version)
            if stored:
                self.move(job, "succeeded", note="registered before the server stopped")
            else:
                self.move(job, "failed", error="the server stopped before the adapter was registered; nothing was")
