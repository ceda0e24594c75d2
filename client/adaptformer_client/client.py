"""``Client`` and ``AsyncClient`` for the AdaptFormer Serve HTTP API.

Both share ``_BaseClient``: it builds every request as an ``httpx.Request`` with the function that parses its
response, and decides retries. The two subclasses only send (and sleep) differently.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from adaptformer_client._version import __version__
from adaptformer_client.errors import APIConnectionError, APITimeoutError, ServerError, parse_error
from adaptformer_client.inputs import ImageInput, encode_clip, encode_image
from adaptformer_client.jobs import AsyncJob, Examples, Job, zip_examples
from adaptformer_client.types import (
    AdapterInfo,
    DeleteResult,
    Health,
    JobInfo,
    MultiPredictResponse,
    PredictResponse,
    Ready,
    RollbackResult,
    SplitInfo,
    UploadResult,
    VersionList,
)

__all__ = ["DEFAULT_URL", "AsyncClient", "Client"]

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "ADAPTFORMER_URL"
API_KEY_ENV = "ADAPTFORMER_API_KEY"
RETRY_STATUSES = frozenset({429, 503})

# Transport errors worth another try: the network or a restarting server, not a malformed URL.
_TRANSIENT_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
# Raised before any byte of the request left: resending cannot apply anything twice.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

log = logging.getLogger("adaptformer_client")
T = TypeVar("T")
# A per-call timeout: seconds, an httpx.Timeout, None (wait forever) or _DEFAULT (the client's own).
_DEFAULT: Any = httpx.USE_CLIENT_DEFAULT
Timeout = float | httpx.Timeout | None
M = TypeVar("M", bound=BaseModel)
AdapterFile = str | os.PathLike | bytes | IO[bytes]


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call: the request, how to read its answer, and when it may be sent again."""

    request: httpx.Request
    parse: Callable[[httpx.Response], T]
    # Safe to resend after a connection broke mid-request (the server may have run it already).
    idempotent: bool = True
    retry_statuses: frozenset[int] = RETRY_STATUSES


class _AdapterList(BaseModel):
    adapters: list[AdapterInfo]
    next_cursor: str | None = None  # a server from before paging answers everything, without it


PAGE_SIZE = 500  # tasks per GET /adapters page when iterating (the server allows up to 1,000)


class _JobList(BaseModel):
    jobs: list[JobInfo]


def _train_params(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); ``None`` when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        payload: Any = response.json()
    except ValueError:
        payload = response.text
    raise parse_error(response.status_code, payload, retry_after=_retry_after(response))


def _json(response: httpx.Response, model: type[M]) -> M:
    _raise_for_status(response)
    try:
        return model.model_validate(response.json())
    except (ValueError, ValidationError) as e:
        raise ServerError(
            f"unexpected answer from the server to {response.request.method} {response.request.url.path}: {e}",
            status=response.status_code,
        ) from None


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: _json(response, model)


def _ready(response: httpx.Response) -> Ready:
    if response.status_code == 503:
        try:
            return Ready.model_validate(response.json())
        except (ValueError, ValidationError):
            pass  # not the "loading" answer: an ordinary 503 error
    return _json(response, Ready)


def _text(response: httpx.Response) -> str:
    _raise_for_status(response)
    return response.text


@dataclass(frozen=True)
class _File:
    """The bytes of a downloaded adapter file and the version the server says they are."""

    data: bytes
    version: str


def _file(response: httpx.Response) -> _File:
    _raise_for_status(response)
    data = response.content
    version = hashlib.sha256(data).hexdigest()[:12]
    said = response.headers.get("X-Adapter-Version", version)
    if said != version:  # a cut or altered body: never write it as the adapter
        raise ServerError(
            f"the downloaded file has version {version}, not the {said} the server announced; download it again",
            status=response.status_code,
        )
    return _File(data, version)


def _pinned(task: str, version: str | None) -> str:
    return task if version is None else f"{task}@{version}"


def _save(file: _File, path: str | os.PathLike, task: str) -> Path:
    """Writes a downloaded file (a directory gets ``<task>.safetensors``) through a temp file and a rename."""
    target = Path(path)
    if target.is_dir():
        target = target / f"{task}.safetensors"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(file.data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _connection_error(error: httpx.TransportError, url: httpx.URL) -> APIConnectionError:
    target = f"{url.scheme}://{url.netloc.decode()}"
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"no answer from {target} in time ({type(error).__name__}): raise the timeout?")
    if isinstance(error, httpx.ConnectError):
        return APIConnectionError(f"cannot connect to {target}: {error or 'connection refused'}; is the server up?")
    return APIConnectionError(f"connection to {target} failed: {type(error).__name__}: {error}")


def _adapter_file(file: AdapterFile) -> tuple[str, bytes]:
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        return path.name, path.read_bytes()
    if isinstance(file, (bytes, bytearray, memoryview)):
        return "adapter.safetensors", bytes(file)
    if hasattr(file, "read"):
        data = file.read()
        if not isinstance(data, bytes):
            raise TypeError("the adapter file object must be opened in binary mode ('rb')")
        name = getattr(file, "name", None)
        return (Path(name).name if isinstance(name, str) and name else "adapter.safetensors"), data
    raise TypeError(f"cannot upload a {type(file).__name__}: pass a path, bytes or a binary file object")


class _BaseClient:
    """Request building, response parsing and the retry policy shared by ``Client`` and ``AsyncClient``."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        jitter: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter}")
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self._random = random.Random()
        self._headers = {"User-Agent": f"adaptformer-client/{__version__}", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._headers.update(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # Requests. Bodies are read into memory at once so that a retry can send them again.

    def _build(self, method: str, path: str, timeout: Timeout = _DEFAULT, **kwargs: Any) -> httpx.Request:
        request = self._http.build_request(method, path, timeout=timeout, **kwargs)
        request.read()
        return request

    def _predict_call(
        self,
        task: str,
        field: str,
        parts: list[tuple[str, bytes, str]],
        top_k: int | None,
        timeout: Timeout,
        version: str | None = None,
    ) -> _Call[PredictResponse]:
        params: dict[str, Any] = {"task": _pinned(task, version)}
        if top_k is not None:
            params["top_k"] = top_k
        files = [(field, part) for part in parts]
        # Predicting changes nothing on the server: safe to resend whatever happened to the first try.
        request = self._build("POST", "/predict", timeout, params=params, files=files)
        return _Call(request, _model(PredictResponse))

    def _predict(
        self, task: str, image: ImageInput, top_k: int | None, timeout: Timeout, version: str | None = None
    ) -> _Call[PredictResponse]:
        if isinstance(image, (list, tuple)):
            raise TypeError("predict takes one image; use predict_batch for a list of images")
        return self._predict_call(task, "image", [encode_image(image)], top_k, timeout, version)

    def _predict_batch(
        self,
        task: str,
        images: Sequence[ImageInput],
        top_k: int | None,
        timeout: Timeout,
        version: str | None = None,
    ) -> _Call[PredictResponse]:
        if not images:
            raise ValueError("predict_batch needs at least one image")
        parts = [encode_image(image, f"image{i:04d}") for i, image in enumerate(images)]
        return self._predict_call(task, "image", parts, top_k, timeout, version)

    def _predict_clip(
        self, task: str, clip: Any, top_k: int | None, timeout: Timeout, version: str | None = None
    ) -> _Call[PredictResponse]:
        field, parts = encode_clip(clip)
        if not parts:
            raise ValueError("predict_clip needs at least one frame")
        return self._predict_call(task, field, parts, top_k, timeout, version)

    def _predict_many(
        self,
        tasks: str | Sequence[str],
        image: ImageInput | Sequence[ImageInput],
        top_k: int | None,
        timeout: Timeout,
    ) -> _Call[MultiPredictResponse]:
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        if not names:
            raise ValueError("predict_many needs at least one task (or '*' for every image task)")
        images: list[ImageInput] = list(image) if isinstance(image, (list, tuple)) else [cast(ImageInput, image)]
        if not images:
            raise ValueError("predict_many needs at least one image")
        parts = [encode_image(img, f"image{i:04d}") for i, img in enumerate(images)]
        params: dict[str, Any] = {"task": names}
        if top_k is not None:
            params["top_k"] = top_k
        files = [("image", part) for part in parts]

        def parse(response: httpx.Response) -> MultiPredictResponse:
            _raise_for_status(response)
            body = response.json()
            if isinstance(body, dict) and "results" not in body:  # one task named: the single-task shape
                return MultiPredictResponse(
                    results=[_json(response, PredictResponse)], latency_ms=body.get("latency_ms", 0)
                )
            return _json(response, MultiPredictResponse)

        return _Call(self._build("POST", "/predict", timeout, params=params, files=files), parse)

    def _list_adapters(
        self,
        cursor: str | None = None,
        limit: int | None = None,
        prefix: str | None = None,
        modality: str | None = None,
    ) -> _Call[_AdapterList]:
        params = {"cursor": cursor, "limit": limit, "prefix": prefix or None, "modality": modality}
        request = self._build("GET", "/adapters", params={k: v for k, v in params.items() if v is not None})
        return _Call(request, lambda r: _json(r, _AdapterList))

    def _get_adapter(self, task: str) -> _Call[AdapterInfo]:
        return _Call(self._build("GET", f"/adapters/{quote(task, safe='')}"), _model(AdapterInfo))

    def _upload_adapter(self, file: AdapterFile, task: str | None, timeout: Timeout) -> _Call[UploadResult]:
        name, data = _adapter_file(file)
        form = {"task": task} if task is not None else None
        files = {"file": (name, data, "application/octet-stream")}
        request = self._build("POST", "/adapters", timeout, files=files, data=form)
        # Not idempotent: once the body went out the server may have installed the adapter.
        return _Call(request, _model(UploadResult), idempotent=False)

    def _register(self, task: str | None, source: str, sha256: str | None, timeout: Timeout) -> _Call[UploadResult]:
        body: dict[str, Any] = {"source": source}
        if task is not None:
            body["task"] = task
        if sha256 is not None:
            body["sha256"] = sha256
        request = self._build("POST", "/adapters", timeout, json=body)
        return _Call(request, _model(UploadResult), idempotent=False)

    def _versions(self, task: str) -> _Call[VersionList]:
        return _Call(self._build("GET", f"/adapters/{quote(task, safe='')}/versions"), _model(VersionList))

    def _download(self, task: str, version: str | None, timeout: Timeout) -> _Call[_File]:
        params = {"version": version} if version is not None else None
        headers = {"Accept": "application/octet-stream"}
        request = self._build("GET", f"/adapters/{quote(task, safe='')}/file", timeout, params=params, headers=headers)
        return _Call(request, _file)

    def _rollback(self, task: str, version: str | None) -> _Call[RollbackResult]:
        body = {"version": version} if version is not None else None
        request = self._build("POST", f"/adapters/{quote(task, safe='')}/rollback", json=body)
        # "The version before the current one" moves with every rollback: resend only a named version.
        return _Call(request, _model(RollbackResult), idempotent=version is not None)

    def _split(self, task: str, versions: Mapping[str, float]) -> _Call[SplitInfo]:
        body = {"versions": dict(versions)}
        return _Call(self._build("PUT", f"/adapters/{quote(task, safe='')}/split", json=body), _model(SplitInfo))

    def _get_split(self, task: str) -> _Call[SplitInfo]:
        return _Call(self._build("GET", f"/adapters/{quote(task, safe='')}/split"), _model(SplitInfo))

    def _promote(self, task: str, version: str) -> _Call[RollbackResult]:
        request = self._build("POST", f"/adapters/{quote(task, safe='')}/split/promote", json={"version": version})
        return _Call(request, _model(RollbackResult), idempotent=False)  # a second promote finds no split: 409

    def _abort_split(self, task: str) -> _Call[SplitInfo]:
        request = self._build("DELETE", f"/adapters/{quote(task, safe='')}/split")
        return _Call(request, _model(SplitInfo), idempotent=False)  # a second abort finds no split: 409

    def _delete_adapter(self, task: str) -> _Call[DeleteResult]:
        return _Call(self._build("DELETE", f"/adapters/{quote(task, safe='')}"), _model(DeleteResult))

    def _train(self, task: str, examples: Examples, params: Mapping[str, Any], timeout: Timeout) -> _Call[JobInfo]:
        files = {"examples": ("examples.zip", zip_examples(examples), "application/zip")}
        request = self._build("POST", f"/tasks/{quote(task, safe='')}/train", timeout, params=params, files=files)
        # Not idempotent once sent (a second job would train); 429/503 mean not accepted, so those are retried.
        return _Call(request, _model(JobInfo), idempotent=False)

    def _job(self, job_id: str) -> _Call[JobInfo]:
        return _Call(self._build("GET", f"/jobs/{quote(job_id, safe='')}"), _model(JobInfo))

    def _jobs(self) -> _Call[list[JobInfo]]:
        return _Call(self._build("GET", "/jobs"), lambda r: _json(r, _JobList).jobs)

    def _cancel_job(self, job_id: str) -> _Call[JobInfo]:
        return _Call(self._build("DELETE", f"/jobs/{quote(job_id, safe='')}"), _model(JobInfo))

    def _health(self) -> _Call[Health]:
        return _Call(self._build("GET", "/healthz"), _model(Health))

    def _readiness(self) -> _Call[Ready]:
        # "Loading" is an answer here, not a reason to wait.
        return _Call(self._build("GET", "/readyz"), _ready, retry_statuses=frozenset())

    def _metrics(self) -> _Call[str]:
        return _Call(self._build("GET", "/metrics", headers={"Accept": "text/plain"}), _text)

    def _check_wait(self, deadline: float, timeout: float) -> None:
        """Raises ``APITimeoutError`` once ``deadline`` (``time.monotonic``) has passed waiting for readiness."""
        if time.monotonic() >= deadline:
            raise APITimeoutError(f"{self.base_url} not ready after {timeout:g}s")

    # Retries.

    def _backoff_delay(self, attempt: int) -> float:
        """Exponential backoff, each wait drawn from [1 - jitter, 1] of it so that clients do not retry in step."""
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        return delay * (1.0 - self.jitter * self._random.random())

    def _settle(
        self, call: _Call[Any], attempt: int, answer: httpx.Response | httpx.TransportError
    ) -> httpx.Response | float:
        """After try ``attempt`` (0-based) of ``call``: the response to read, or the seconds to wait before the next
        try; raises the connection error when a try that broke is not made again."""
        if isinstance(answer, httpx.Response):
            delay = self._retry_delay(call, attempt, response=answer)
            return answer if delay is None else delay
        delay = self._retry_delay(call, attempt, error=answer)
        if delay is None:
            raise _connection_error(answer, call.request.url) from answer
        return delay

    def _retry_delay(
        self,
        call: _Call[Any],
        attempt: int,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> float | None:
        """Seconds to wait before sending ``call`` again after ``attempt`` (0-based) failed; ``None``: do not."""
        if attempt >= self.max_retries:
            return None
        if error is not None:
            if not isinstance(error, _TRANSIENT_ERRORS):
                return None
            if not call.idempotent and not isinstance(error, _NOT_SENT_ERRORS):
                return None
            delay = self._backoff_delay(attempt)
            reason = f"{type(error).__name__}: {error}"
        else:
            assert response is not None
            if response.status_code not in call.retry_statuses:
                return None
            asked = _retry_after(response)
            delay = self._backoff_delay(attempt) if asked is None else min(asked, self.max_backoff)
            reason = f"HTTP {response.status_code}"
        log.info("%s %s: %s; retry %d/%d in %.2fs", call.request.method, call.request.url.path, reason,
                 attempt + 1, self.max_retries, delay)  # fmt: skip
        return delay


class Client(_BaseClient):
    """Synchronous client.

    >>> with Client("http://127.0.0.1:8000") as client:
    ...     client.predict("digits", "seven.png", top_k=3).top

    Args:
        base_url: Where the server listens (default: $ADAPTFORMER_URL, else http://127.0.0.1:8000).
        api_key: Sent as ``Authorization: Bearer <key>``; a predict key, or the admin key to upload and delete
            (default: $ADAPTFORMER_API_KEY, else none).
        timeout: Seconds to wait for the server (an ``httpx.Timeout`` for finer control; ``None``: forever). The
            predict and upload methods take a ``timeout=`` of their own for one call.
        max_retries: Further tries after a 503/429 or a connection error (0 disables retries).
        backoff: First wait in seconds between tries, doubled each time; a Retry-After header replaces it.
        jitter: Each backoff wait is drawn from [1 - jitter, 1] times its value (0: exact waits).
        max_backoff: Cap on any single wait, Retry-After included.
        headers: Extra headers for every request.
        transport: An ``httpx`` transport (tests pass ``httpx.MockTransport``).
        sleep: Called with the seconds to wait between tries.
    """

    _http: httpx.Client

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        jitter: float = 0.5,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        super().__init__(base_url, api_key, max_retries, backoff, max_backoff, jitter, headers)
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    def _run(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                answer: httpx.Response | httpx.TransportError = self._http.send(call.request)
            except httpx.TransportError as e:
                answer = e
            step = self._settle(call, attempt, answer)
            if isinstance(step, httpx.Response):
                return call.parse(step)
            self._sleep(step)
            attempt += 1

    def predict(
        self,
        task: str,
        image: ImageInput,
        top_k: int | None = None,
        *,
        version: str | None = None,
        timeout: Timeout = _DEFAULT,
    ) -> PredictResponse:
        """Classifies one image; ``.top`` of the answer is the best prediction.

        Args:
            task: Name of the adapter to use.
            image: A path, encoded image bytes, a binary file object, a PIL image or a uint8 array.
            top_k: How many predictions to return (server default 5, clamped to the number of classes).
            version: A kept version to run instead of the current one (``versions(task)`` lists them).
        """
        return self._run(self._predict(task, image, top_k, timeout, version))

    def predict_batch(
        self,
        task: str,
        images: Sequence[ImageInput],
        top_k: int | None = None,
        *,
        version: str | None = None,
        timeout: Timeout = _DEFAULT,
    ) -> PredictResponse:
        """Classifies several images in one request; ``predictions[i]`` answers ``images[i]``."""
        return self._run(self._predict_batch(task, images, top_k, timeout, version))

    def predict_clip(
        self,
        task: str,
        clip: Any,
        top_k: int | None = None,
        *,
        version: str | None = None,
        timeout: Timeout = _DEFAULT,
    ) -> PredictResponse:
        """Classifies one clip: a list of frames (in order), a TxHxW(xC) array, or an animated GIF/WebP."""
        return self._run(self._predict_clip(task, clip, top_k, timeout, version))

    def predict_many(
        self,
        tasks: str | Sequence[str],
        image: ImageInput | Sequence[ImageInput],
        top_k: int | None = None,
        *,
        timeout: Timeout = _DEFAULT,
    ) -> MultiPredictResponse:
        """Classifies one image (or a list of images) with several tasks in one request and one forward pass.

        Args:
            tasks: Task names, or ``"*"`` for every image task the server has.
            image: One image (path, bytes, file, PIL image, uint8 array) or a list of them.
            top_k: Predictions per input and task (server default 5).

        Returns:
            ``results`` holds one single-task answer per task, in order; ``answer["digits"]`` picks one.
        """
        return self._run(self._predict_many(tasks, image, top_k, timeout))

    def list_adapters(self, prefix: str | None = None, modality: str | None = None) -> list[AdapterInfo]:
        """Every adapter the server can serve, sorted by task (read page by page: see :meth:`iter_adapters`)."""
        return list(self.iter_adapters(prefix, modality))

    def iter_adapters(
        self, prefix: str | None = None, modality: str | None = None, *, page_size: int = PAGE_SIZE
    ) -> Iterator[AdapterInfo]:
        """The adapters the server can serve, sorted by task, one ``GET /adapters`` page of ``page_size`` at a time.

        Every task that exists throughout the iteration comes exactly once, even while tasks are added or removed.

        Args:
            prefix: Only tasks whose name starts with it.
            modality: Only ``"image"`` or only ``"clip"`` tasks.
        """
        cursor = None
        while True:
            page = self._run(self._list_adapters(cursor, page_size, prefix, modality))
            yield from page.adapters
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_adapter(self, task: str) -> AdapterInfo:
        """One adapter's description. Raises ``NotFoundError`` for an unknown task."""
        return self._run(self._get_adapter(task))

    def upload_adapter(
        self, file: AdapterFile, task: str | None = None, *, timeout: Timeout = _DEFAULT
    ) -> UploadResult:
        """Installs (or replaces) an adapter from a .safetensors file; servable when this returns.

        Args:
            file: A path, the file's bytes or a binary file object.
            task: Name to serve it under, instead of the task name in the file's metadata.
        """
        return self._run(self._upload_adapter(file, task, timeout))

    def register(
        self, task: str | None = None, *, source: str, sha256: str | None = None, timeout: Timeout = _DEFAULT
    ) -> UploadResult:
        """Has the server fetch an adapter file from ``source`` and install it, as an upload (admin).

        Args:
            task: Name to serve it under (default: the task name in the file).
            source: ``https://``, ``http://``, ``file://`` or ``hf://owner/repo/file[@revision]``; the server's
                operator enables each scheme.
            sha256: Hex SHA-256 the fetched bytes must have; nothing is stored when they do not.
        """
        return self._run(self._register(task, source, sha256, timeout))

    def versions(self, task: str) -> VersionList:
        """The versions the server keeps of ``task``, newest first (``.current`` is the one served)."""
        return self._run(self._versions(task))

    def download(
        self, task: str, path: str | os.PathLike, version: str | None = None, *, timeout: Timeout = _DEFAULT
    ) -> Path:
        """Saves the exact bytes of the current version (or of a kept ``version``) to ``path`` (a directory gets
        ``<task>.safetensors``); the bytes are checked against the version the server names. Returns the path."""
        return _save(self._run(self._download(task, version, timeout)), path, task)

    def rollback(self, task: str, version: str | None = None) -> RollbackResult:
        """Makes a kept version current again (default: the one before the current one) (admin)."""
        return self._run(self._rollback(task, version))

    def split(self, task: str, versions: Mapping[str, float]) -> SplitInfo:
        """Shares the unpinned requests of ``task`` between kept versions by weight (> 0, summing to 1) (admin)."""
        return self._run(self._split(task, versions))

    def get_split(self, task: str) -> SplitInfo:
        """How the requests of ``task`` are shared between its versions now."""
        return self._run(self._get_split(task))

    def promote(self, task: str, version: str) -> RollbackResult:
        """Makes ``version`` of the split current and clears the split (admin)."""
        return self._run(self._promote(task, version))

    def abort_split(self, task: str) -> SplitInfo:
        """Clears the split: the current version serves every request again (admin)."""
        return self._run(self._abort_split(task))

    def delete_adapter(self, task: str) -> DeleteResult:
        """Removes an adapter. Raises ``NotFoundError`` for an unknown task."""
        return self._run(self._delete_adapter(task))

    def train(
        self,
        task: str,
        examples: Examples,
        *,
        method: str | None = None,
        epochs: int | None = None,
        bottleneck: int | None = None,
        scale: float | None = None,
        layers: str | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        frames: int | None = None,
        val_fraction: float | None = None,
        seed: int | None = None,
        description: str | None = None,
        timeout: Timeout = _DEFAULT,
    ) -> Job:
        """Has the server train ``task`` (a new task, or a new version of one) from labelled examples (admin key).

        Args:
            task: The task name to register the adapter under.
            examples: A folder of ``<class>/<image>`` (or ``<class>/<clip>/<frames>``, or GIF clips), zipped here;
                or a ``.zip`` path, zip bytes or a binary file object.
            method: ``adaptformer`` (server default) or ``linear``; the other knobs are ``adaptformer train``'s
                (unset: the server's defaults, made for 20-200 examples per class).

        Returns:
            The queued job: ``wait(progress=True)``, ``status()``, ``cancel()``.
        """
        params = _train_params(dict(method=method, epochs=epochs, bottleneck=bottleneck, scale=scale, layers=layers,
                                    lr=lr, batch_size=batch_size, frames=frames, val_fraction=val_fraction,
                                    seed=seed, description=description))  # fmt: skip
        info = self._run(self._train(task, examples, params, timeout))
        return self._handle(info)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (``jobs()`` lists them)."""
        return self._handle(self._run(self._job(job_id)))

    def jobs(self) -> list[JobInfo]:
        """The server's training jobs, newest first (admin key)."""
        return self._run(self._jobs())

    def _handle(self, info: JobInfo) -> Job:
        return Job(info, lambda i: self._run(self._job(i)), lambda i: self._run(self._cancel_job(i)), self._sleep)

    def health(self) -> Health:
        """Liveness (``/healthz``): the process answers."""
        return self._run(self._health())

    def ready(self) -> Ready:
        """Readiness (``/readyz``): ``.is_ready`` once the backbone is loaded; no retries while loading."""
        return self._run(self._readiness())

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> Ready:
        """Polls ``/readyz`` (through connection errors) until the server is ready.

        Raises:
            APITimeoutError: not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.ready()
                if state.is_ready:
                    return state
            except APIConnectionError:
                pass
            self._check_wait(deadline, timeout)
            self._sleep(interval)

    def metrics(self) -> str:
        """The Prometheus metrics text."""
        return self._run(self._metrics())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """Asynchronous client: the methods and arguments of ``Client``, awaited.

    >>> async with AsyncClient("http://127.0.0.1:8000") as client:
    ...     answer = await client.predict("digits", "seven.png")
    """

    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        jitter: float = 0.5,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        super().__init__(base_url, api_key, max_retries, backoff, max_backoff, jitter, headers)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def _run(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                answer: httpx.Response | httpx.TransportError = await self._http.send(call.request)
            except httpx.TransportError as e:
                answer = e
            step = self._settle(call, attempt, answer)
            if isinstance(step, httpx.Response):
                return call.parse(step)
            await self._sleep(step)
            attempt += 1

    async def predict(
        self,
        task: str,
        image: ImageInput,
        top_k: int | None = None,
        *,
        version: str | None = None,
        timeout: Timeout = _DEFAULT,
    ) -> PredictResponse:
        """See ``Client.predict``."""
        return await self._run(self._predict(task, image, top_k, timeout, version))

    async def predict_batch(
        self,
        task: str,
        images: Sequence[ImageInput],
        top_k: int | None = None,
        *,
        version: str | None = None,
        timeout: Timeout = _DEFAULT,
    ) -> PredictResponse:
        """See ``Client.predict_batch``."""
        return await self._run(self._predict_batch(task, images, top_k, timeout, version))

    async def predict_clip(
        self,
        task: str,
        clip: Any,
        top_k: int | None = None,
        *,
        version: str | None = None,
        timeout: Timeout = _DEFAULT,
    ) -> PredictResponse:
        """See ``Client.predict_clip``."""
        return await self._run(self._predict_clip(task, clip, top_k, timeout, version))

    async def predict_many(
        self,
        tasks: str | Sequence[str],
        image: ImageInput | Sequence[ImageInput],
        top_k: int | None = None,
        *,
        timeout: Timeout = _DEFAULT,
    ) -> MultiPredictResponse:
        """See ``Client.predict_many``."""
        return await self._run(self._predict_many(tasks, image, top_k, timeout))

    async def list_adapters(self, prefix: str | None = None, modality: str | None = None) -> list[AdapterInfo]:
        """See ``Client.list_adapters``."""
        return [a async for a in self.iter_adapters(prefix, modality)]

    async def iter_adapters(
        self, prefix: str | None = None, modality: str | None = None, *, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[AdapterInfo]:
        """See ``Client.iter_adapters`` (``async for adapter in client.iter_adapters()``)."""
        cursor = None
        while True:
            page = await self._run(self._list_adapters(cursor, page_size, prefix, modality))
            for adapter in page.adapters:
                yield adapter
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_adapter(self, task: str) -> AdapterInfo:
        return await self._run(self._get_adapter(task))

    async def upload_adapter(
        self, file: AdapterFile, task: str | None = None, *, timeout: Timeout = _DEFAULT
    ) -> UploadResult:
        """See ``Client.upload_adapter``."""
        return await self._run(self._upload_adapter(file, task, timeout))

    async def register(
        self, task: str | None = None, *, source: str, sha256: str | None = None, timeout: Timeout = _DEFAULT
    ) -> UploadResult:
        """See ``Client.register``."""
        return await self._run(self._register(task, source, sha256, timeout))

    async def versions(self, task: str) -> VersionList:
        """See ``Client.versions``."""
        return await self._run(self._versions(task))

    async def download(
        self, task: str, path: str | os.PathLike, version: str | None = None, *, timeout: Timeout = _DEFAULT
    ) -> Path:
        """See ``Client.download``."""
        file = await self._run(self._download(task, version, timeout))
        return await asyncio.to_thread(_save, file, path, task)

    async def rollback(self, task: str, version: str | None = None) -> RollbackResult:
        """See ``Client.rollback``."""
        return await self._run(self._rollback(task, version))

    async def split(self, task: str, versions: Mapping[str, float]) -> SplitInfo:
        """See ``Client.split``."""
        return await self._run(self._split(task, versions))

    async def get_split(self, task: str) -> SplitInfo:
        """See ``Client.get_split``."""
        return await self._run(self._get_split(task))

    async def promote(self, task: str, version: str) -> RollbackResult:
        """See ``Client.promote``."""
        return await self._run(self._promote(task, version))

    async def abort_split(self, task: str) -> SplitInfo:
        """See ``Client.abort_split``."""
        return await self._run(self._abort_split(task))

    async def delete_adapter(self, task: str) -> DeleteResult:
        return await self._run(self._delete_adapter(task))

    async def train(self, task: str, examples: Examples, *, timeout: Timeout = _DEFAULT, **options: Any) -> AsyncJob:
        """See ``Client.train`` (the same keyword options); the examples are zipped in a worker thread."""
        call = await asyncio.to_thread(self._train, task, examples, _train_params(options), timeout)
        return self._handle(await self._run(call))

    async def job(self, job_id: str) -> AsyncJob:
        """See ``Client.job``."""
        return self._handle(await self._run(self._job(job_id)))

    async def jobs(self) -> list[JobInfo]:
        """See ``Client.jobs``."""
        return await self._run(self._jobs())

    def _handle(self, info: JobInfo) -> AsyncJob:
        async def status(i: str) -> JobInfo:
            return await self._run(self._job(i))

        async def cancel(i: str) -> JobInfo:
            return await self._run(self._cancel_job(i))

        return AsyncJob(info, status, cancel, self._sleep)

    async def health(self) -> Health:
        return await self._run(self._health())

    async def ready(self) -> Ready:
        return await self._run(self._readiness())

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> Ready:
        """See ``Client.wait_until_ready``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = await self.ready()
                if state.is_ready:
                    return state
            except APIConnectionError:
                pass
            self._check_wait(deadline, timeout)
            await self._sleep(interval)

    async def metrics(self) -> str:
        return await self._run(self._metrics())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
