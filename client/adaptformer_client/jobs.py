"""Training jobs from the client's side: the examples as a zip, and the ``Job`` handle ``Client.train`` returns.

>>> job = client.train("defects", "photos/", epochs=15)   # photos/<class>/<image>
>>> info = job.wait(progress=True)                        # a tqdm bar where tqdm is installed
>>> client.predict("defects", "new.jpg").top
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from adaptformer_client.errors import AdaptformerClientError, APITimeoutError
from adaptformer_client.types import JobInfo

__all__ = ["AsyncJob", "Examples", "Job", "JobFailedError", "zip_examples"]

Examples = str | os.PathLike | bytes | IO[bytes]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_STORED = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})  # compressed already


class JobFailedError(AdaptformerClientError):
    """The job ended ``failed`` or ``cancelled``; ``job`` is its last state and ``message`` the server's reason."""

    def __init__(self, job: JobInfo) -> None:
        reason = job.error or ("cancelled" if job.status == "cancelled" else "no reason given")
        super().__init__(f"job {job.job} ({job.task}) {job.status}: {reason}")
        self.job = job


def zip_examples(examples: Examples) -> bytes:
    """The examples as zip bytes: a folder (``<class>/<image>``, ``<class>/<clip>/<frames>`` or GIF clips) is
    zipped here (hidden files left out); a ``.zip`` path, zip bytes or a binary file object is sent as it is."""
    if isinstance(examples, (str, os.PathLike)):
        path = Path(examples)
        if path.is_dir():
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for f in sorted(path.rglob("*")):
                    rel = f.relative_to(path)
                    if f.is_file() and not any(p.startswith(".") for p in rel.parts):
                        kind = zipfile.ZIP_STORED if f.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
                        z.write(f, rel.as_posix(), compress_type=kind)
            return buf.getvalue()
        return path.read_bytes()
    if isinstance(examples, (bytes, bytearray, memoryview)):
        return bytes(examples)
    if hasattr(examples, "read"):
        data = examples.read()
        if not isinstance(data, bytes):
            raise TypeError("the examples file object must be opened in binary mode ('rb')")
        return data
    raise TypeError(f"cannot send {type(examples).__name__} as examples: pass a folder, a .zip path or zip bytes")


class _Progress:
    """A tqdm bar over the epochs (a line per epoch without tqdm); nothing when not asked for."""

    def __init__(self, enabled: bool, job: str) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.job = job
        self.last_epoch = -1

    def update(self, info: JobInfo) -> None:
        if not self.enabled:
            return
        if self.bar is None and info.status != "queued":
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=info.epochs, desc=f"{info.task} ({self.job})", unit="epoch", dynamic_ncols=True)
            except ImportError:
                self.bar = False
        post = {"status": info.status}
        if info.loss is not None:
            post["loss"] = f"{info.loss:.3f}"
        if info.val_top1 is not None:
            post["val"] = f"{info.val_top1:.3f}"
        if self.bar:
            self.bar.n = info.epoch
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
        elif self.bar is False and info.epoch != self.last_epoch:
            print(f"{info.task}: epoch {info.epoch}/{info.epochs} " + " ".join(f"{k}={v}" for k, v in post.items()))
        self.last_epoch = info.epoch

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _ended(info: JobInfo, bar: _Progress, deadline: float | None, timeout: float | None) -> bool:
    """One poll of ``wait``: shows ``info``; True once the job has ended; raises past the deadline."""
    bar.update(info)
    if info.status in TERMINAL:
        return True
    if deadline is not None and time.monotonic() >= deadline:
        raise APITimeoutError(f"job {info.job} still {info.status} after {timeout:g} s")
    return False


def _outcome(info: JobInfo) -> JobInfo:
    """The final state of a job that succeeded; raises JobFailedError for a failed or cancelled one."""
    if info.status != "succeeded":
        raise JobFailedError(info)
    return info


R = TypeVar("R")


class _Handle(Generic[R]):
    """What ``Job`` and ``AsyncJob`` hold: the job's id, its last state, and the calls that ask the server."""

    def __init__(self, info: JobInfo, status: Callable[[str], R], cancel: Callable[[str], R], sleep: Any) -> None:
        self.id = info.job
        self.info = info
        self._status = status
        self._cancel = cancel
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, task={self.info.task!r}, status={self.info.status!r})"


class Job(_Handle[JobInfo]):
    """A training job on the server (``Client.train``, ``Client.job``).

    Attributes:
        id: The job id (``j-...``).
        info: The last state read from the server.
    """

    def __init__(self, info: JobInfo, status: Callable[[str], JobInfo], cancel: Callable[[str], JobInfo],
                 sleep: Callable[[float], Any] = time.sleep) -> None:  # fmt: skip
        super().__init__(info, status, cancel, sleep)

    def status(self) -> JobInfo:
        """The job now: status, epoch, loss, validation accuracy, ETA."""
        self.info = self._status(self.id)
        return self.info

    def cancel(self) -> JobInfo:
        """Cancels the job (nothing is registered); a finished job is left as it is."""
        self.info = self._cancel(self.id)
        return self.info

    def wait(self, progress: bool = False, timeout: float | None = None, interval: float = 1.0) -> JobInfo:
        """Polls until the job ends; returns its final state.

        Args:
            progress: Show a progress bar over the epochs (tqdm where installed, else a line per epoch).
            timeout: Seconds to wait at most (None: until it ends).
            interval: Seconds between polls.

        Raises:
            JobFailedError: the job failed or was cancelled.
            APITimeoutError: still running after ``timeout`` (the job goes on; ``cancel()`` stops it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Progress(progress, self.id) as bar:
            while not _ended(self.status(), bar, deadline, timeout):
                self._sleep(interval)
        return _outcome(self.info)


class AsyncJob(_Handle[Awaitable[JobInfo]]):
    """``Job`` for ``AsyncClient``: the same methods, awaited."""

    def __init__(self, info: JobInfo, status: Callable[[str], Awaitable[JobInfo]],
                 cancel: Callable[[str], Awaitable[JobInfo]], sleep: Callable[[float], Awaitable[Any]]) -> None:  # fmt: skip
        super().__init__(info, status, cancel, sleep)

    async def status(self) -> JobInfo:
        self.info = await self._status(self.id)
        return self.info

    async def cancel(self) -> JobInfo:
        self.info = await self._cancel(self.id)
        return self.info

    async def wait(self, progress: bool = False, timeout: float | None = None, interval: float = 1.0) -> JobInfo:
        """See ``Job.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Progress(progress, self.id) as bar:
            while not _ended(await self.status(), bar, deadline, timeout):
                await self._sleep(interval)
        return _outcome(self.info)
