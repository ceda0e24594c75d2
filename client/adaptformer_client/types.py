"""Pydantic models of the API's responses (docs/API_CONTRACT.md). Unknown fields a newer server adds are ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "AdapterInfo",
    "DeleteResult",
    "Health",
    "InputInfo",
    "JobInfo",
    "MultiPredictResponse",
    "PredictResponse",
    "Prediction",
    "Ready",
    "RollbackResult",
    "SplitInfo",
    "UploadResult",
    "VersionInfo",
    "VersionList",
]


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    """Answer to one predict call: one list of the top-k predictions per input image (or one for the clip)."""

    task: str
    version: str
    modality: str  # "image" | "clip"
    predictions: list[list[Prediction]]  # [inputs][top_k], best first
    latency_ms: float

    @property
    def top(self) -> Prediction:
        """The best prediction of a single-input answer (``predict``, ``predict_clip``).

        Raises:
            ValueError: the answer is for several inputs; use ``tops`` or ``predictions``.
        """
        if len(self.predictions) != 1:
            raise ValueError(f"this answer is for {len(self.predictions)} inputs; use .tops or .predictions")
        if not self.predictions[0]:
            raise ValueError("the server returned no predictions")
        return self.predictions[0][0]

    @property
    def tops(self) -> list[Prediction]:
        """The best prediction of each input, in input order."""
        return [p[0] for p in self.predictions]


class MultiPredictResponse(BaseModel):
    """Answer to one multi-task predict call: one single-task answer per task, in the order asked."""

    results: list[PredictResponse]
    latency_ms: float = 0.0

    def __getitem__(self, task: str) -> PredictResponse:
        """The answer of one task (``answer["digits"].top``)."""
        for r in self.results:
            if r.task == task:
                return r
        raise KeyError(task)

    @property
    def tasks(self) -> list[str]:
        return [r.task for r in self.results]


class InputInfo(BaseModel):
    """What to send: pictures are resized to ``size`` x ``size`` RGB, scaled to [0, 1] and normalised."""

    size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    frames: int = 1
    note: str = ""  # what else the task expects, e.g. "a light digit on a dark background"


class AdapterInfo(BaseModel):
    task: str
    description: str = ""  # one line: what the task answers
    input: InputInfo | None = None  # None from servers before this field existed
    version: str  # first 12 hex digits of the sha256 of the adapter file
    method: str  # "adaptformer" | "linear"
    modality: str  # "image" | "clip"
    frames: int
    num_classes: int
    labels: list[str]
    params: int
    percent_of_backbone: float
    size_bytes: int
    backbone: str
    fingerprint: str
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str
    resident: bool


class UploadResult(BaseModel):
    adapter: AdapterInfo
    replaced: bool
    previous_version: str | None = None


class VersionInfo(BaseModel):
    """One kept version of a task."""

    version: str
    current: bool  # whether plain predictions (no version named) answer with it
    size_bytes: int
    stored: str  # when it entered the store (UTC, ISO 8601)
    created: str  # when it was trained, as its file records it
    description: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)


class VersionList(BaseModel):
    """The versions a server keeps of one task, newest first."""

    task: str
    current: str
    keep: int  # versions kept per task (the server's keep_versions)
    versions: list[VersionInfo]


class RollbackResult(BaseModel):
    adapter: AdapterInfo  # the version now current
    previous_version: str


class SplitInfo(BaseModel):
    """How a task's unpinned requests are shared between its versions (``active``: a split is set)."""

    task: str
    current: str
    active: bool
    versions: dict[str, float]  # version -> share of the unpinned requests


class DeleteResult(BaseModel):
    task: str
    deleted: bool
    version: str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    """``/readyz``: ``status`` is ``ready`` once the backbone is loaded, ``loading`` before."""

    status: str
    backbone: str | None = None
    fingerprint: str | None = None
    adapters: int | None = None

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"


class JobInfo(BaseModel):
    """A training job (``POST /tasks/{task}/train``, ``GET /jobs/{id}``): status ``queued``, ``running``,
    ``registering``, ``succeeded``, ``failed`` or ``cancelled``."""

    job: str
    task: str
    status: str
    created: str
    started: str | None = None
    finished: str | None = None
    epoch: int = 0
    epochs: int
    loss: float | None = None  # training loss of the last epoch
    train_top1: float | None = None
    val_top1: float | None = None  # validation accuracy of the last validated epoch
    val_loss: float | None = None
    eta_s: float | None = None  # seconds left (running jobs), 0 once ended
    error: str | None = None  # why it failed
    version: str | None = None  # the adapter version registered
    params: dict[str, Any] = Field(default_factory=dict)
    examples: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")
