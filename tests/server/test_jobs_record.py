"""The job record and its state machine: one table of moves, records of the previous version still read."""

from __future__ import annotations

import json

import pytest

from adaptformer_server.jobs import TERMINAL, TRANSITIONS, JobRecord, TrainKnobs
from adaptformer_server.jobs.record import IllegalTransition

# A record as the previous version wrote it (a dict saved as it grew; a stopped job's internal reason included).
PREVIOUS = {
    "job": "j-0123456789ab",
    "task": "defects",
    "status": "succeeded",
    "created": "2026-01-01T00:00:00Z",
    "started": "2026-01-01T00:00:01Z",
    "finished": "2026-01-01T00:01:00Z",
    "params": {"method": "adaptformer", "bottleneck": 16, "scale": 0.5, "layers": "all", "epochs": 3, "lr": 0.005,
               "batch_size": 16, "frames": None, "val_fraction": 0.2, "seed": 0, "description": "bad or ok"},
    "examples": {"classes": {"bad": 4, "ok": 4}, "examples": 8, "modality": "image", "frames": [1], "own_split": False},
    "epoch": 3, "epochs": 3, "loss": 0.1, "train_top1": 1.0, "val_top1": 1.0, "val_loss": 0.2,
    "history": [{"epoch": 1}], "error": None, "version": "0123456789ab", "log": "log.txt", "worker_pid": 4242,
    "data": {"train": 6, "val": 2, "labels": ["bad", "ok"], "frames": 1, "modality": "image"},
    "metrics": {"val_top1": 1.0}, "epoch_seconds": 1.5, "previous_version": None, "stop_reason": "gone",
}  # fmt: skip


def test_every_status_has_its_moves_and_the_ended_ones_none():
    assert set(TRANSITIONS) == {"queued", "running", "registering", "succeeded", "failed", "cancelled"}
    assert frozenset({"succeeded", "failed", "cancelled"}) == TERMINAL
    assert all(moves <= set(TRANSITIONS) for moves in TRANSITIONS.values())
    # a cancel is allowed until the adapter is being registered, never after
    assert [s for s, moves in TRANSITIONS.items() if "cancelled" in moves] == ["queued", "running"]
    assert "succeeded" in TRANSITIONS["registering"] and "succeeded" not in TRANSITIONS["running"]


def test_a_move_the_table_lacks_is_refused():
    record = JobRecord.from_dict({**PREVIOUS, "status": "queued"})
    running = record.moved("running", started="t")
    assert running.status == "running" and record.status == "queued"  # records are replaced, not changed
    with pytest.raises(IllegalTransition):
        record.moved("succeeded")
    with pytest.raises(IllegalTransition):
        running.moved("cancelled").moved("running")
    with pytest.raises(IllegalTransition):
        running.updated(status="failed")


def test_a_record_of_the_previous_version_reads_and_round_trips():
    record = JobRecord.from_dict(json.loads(json.dumps(PREVIOUS)))
    assert record.params == TrainKnobs(epochs=3, description="bad or ok")
    assert record.description == "bad or ok"  # the adapter's description, from the knob it was given
    assert (record.status, record.version, record.worker_pid) == ("succeeded", "0123456789ab", 4242)
    saved = json.loads(record.to_json())
    assert "stop_reason" not in saved
    assert {k: v for k, v in saved.items() if k in PREVIOUS} == {
        k: v for k, v in PREVIOUS.items() if k != "stop_reason"
    }
    assert JobRecord.from_dict(saved) == record


def test_a_minimal_record_reads_with_defaults():
    record = JobRecord.from_dict({"job": "j-1", "task": "t", "status": "queued", "created": "c", "params": {}})
    assert record.params == TrainKnobs() and record.epochs == TrainKnobs().epochs
    assert (record.epoch, record.history, record.error) == (0, [], None)


@pytest.mark.parametrize(
    "broken",
    [{"status": "paused"}, {"params": {"bottleneck": 0}}, {"job": None, "task": None}, {"status": None}],
)
def test_what_is_not_a_record_is_refused(broken):
    data = {**PREVIOUS, **broken}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError):
        JobRecord.from_dict(data)
