"""A training job's record (``job.json``) and its state machine.

::

    queued -> running -> registering -> succeeded
       |         |             |
       |         +-> failed <--+
       +---------+-> cancelled

``TRANSITIONS`` is the one table of the moves a job may make; :meth:`JobManager.move
<adaptformer_server.jobs.manager.JobManager.move>` is the one method that applies them. A cancel is the move to
``cancelled``: allowed while a job is queued or running, never once it registers its adapter.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from adaptformer_server.jobs.knobs import TrainKnobs

__all__ = ["TERMINAL", "TRANSITIONS", "IllegalTransition", "JobRecord", "JobStatus"]

JobStatus = Literal["queued", "running", "registering", "succeeded", "failed", "cancelled"]

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"registering", "failed", "cancelled"}),
    "registering": frozenset({"succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
TERMINAL: frozenset[JobStatus] = frozenset(s for s, moves in TRANSITIONS.items() if not moves)


class IllegalTransition(RuntimeError):
    """A move the table does not allow (a bug in the code that asked for it)."""


@dataclass(frozen=True)
class JobRecord:
    """What ``GET /jobs/{id}`` shows (with ``eta_s``) and ``job.json`` holds; replaced, never changed in place.

    Attributes:
        job: The job id (``j-`` and 12 hex digits).
        task: The task it trains.
        status: Where it is in the state machine (see the module docstring).
        created: When it was accepted (UTC, ISO 8601); ``started`` and ``finished`` likewise.
        params: Its knobs.
        examples: What its examples hold, as accepted (:meth:`ExamplesSummary.to_dict`).
        epochs: Epochs it trains; ``epoch`` the last one done.
        description: The description its adapter gets (the knob's, or one made from its labels).
        loss: Training loss of the last epoch; ``train_top1`` its accuracy.
        val_top1: Validation accuracy of the last validation pass; ``val_loss`` its loss.
        epoch_seconds: Mean seconds per epoch so far.
        history: Every epoch's figures.
        data: Train and validation counts, labels, frames and modality, once the worker loaded the examples.
        metrics: The trained adapter's metrics.
        error: Why it failed.
        version: The adapter version it trained (registered once it succeeded); ``previous_version`` the task's
            version before.
        note: How a restart settled it.
        worker_pid: The training worker's process id.
        log: The worker's log file, in the job's folder.
    """

    job: str
    task: str
    status: JobStatus
    created: str
    params: TrainKnobs
    epochs: int
    examples: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    started: str | None = None
    finished: str | None = None
    epoch: int = 0
    loss: float | None = None
    train_top1: float | None = None
    val_top1: float | None = None
    val_loss: float | None = None
    epoch_seconds: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    version: str | None = None
    previous_version: str | None = None
    note: str | None = None
    worker_pid: int | None = None
    log: str = "log.txt"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["params"] = self.params.model_dump()
        return out

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1) + "\n").encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        """A record as saved by this version or an earlier one (fields it lacks take their defaults; fields this
        version does not know are dropped).

        Raises:
            ValueError: not a job record (a field missing or of the wrong kind, an unknown status).
        """
        if d.get("status") not in TRANSITIONS:
            raise ValueError(f"unknown job status {str(d.get('status'))[:40]!r}")
        try:
            params = TrainKnobs.model_validate(d.get("params") or {})
            known = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in d.items() if k in known}
            values["params"] = params
            values.setdefault("description", params.description)
            values.setdefault("epochs", params.epochs)
            return cls(**values)
        except TypeError as e:  # a field missing
            raise ValueError(str(e)) from None

    def moved(self, status: JobStatus, **changes: Any) -> JobRecord:
        """This record in ``status`` (with ``changes``), if the table allows the move.

        Raises:
            IllegalTransition: the table does not allow it.
        """
        if status not in TRANSITIONS[self.status]:
            raise IllegalTransition(f"job {self.job}: {self.status} -> {status} is not a move a job makes")
        return dataclasses.replace(self, status=status, **changes)

    def updated(self, **changes: Any) -> JobRecord:
        """This record with ``changes`` to fields other than the status (progress)."""
        if "status" in changes:
            raise IllegalTransition(f"job {self.job}: a status changes through moved(), not updated()")
        return dataclasses.replace(self, **changes)
