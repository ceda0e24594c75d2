"""Hostile adapter uploads (not safetensors, tampered metadata, tensors of the wrong shape or value), table-driven:
each gets its documented 4xx, the shared server stays healthy, and nothing is written outside the store.
"""

from __future__ import annotations

import json
import pickle
import struct

import httpx
import pytest
import torch

from benchmarks.reliability import Kit, Server
from tests.reliability.hostile import (
    PNG,
    Build,
    Case,
    MiB,
    Req,
    adapter,
    cases,
    check_case,
    edit,
    healthy,
    narrow_branch,
    poison,
    predict,
    send,
    set_tensor,
    spec,
    torch_checkpoint,
    upload,
)

pytestmark = pytest.mark.e2e

UPLOADS: list[Case] = [
    # adapter uploads
    ("upload-torch-checkpoint", lambda k: upload(torch_checkpoint()), 422, "invalid_adapter"),
    ("upload-pickle", lambda k: upload(pickle.dumps({"head.weight": [0.0] * 8}, protocol=2)), 422, "invalid_adapter"),
    ("upload-zero-bytes", lambda k: upload(b""), 422, "invalid_adapter"),
    ("upload-random-bytes", lambda k: upload(bytes(range(256)) * 64), 422, "invalid_adapter"),
    ("upload-huge-declared-header", lambda k: upload(struct.pack("<Q", 2**62) + b'{"a": 1}'), 422, "invalid_adapter"),
    (
        "upload-header-past-end",
        lambda k: upload(struct.pack("<Q", 5000) + b'{"__metadata__": {}}'),
        422,
        "invalid_adapter",
    ),
    ("upload-header-not-json", lambda k: upload(struct.pack("<Q", 12) + b"not json!!!!"), 422, "invalid_adapter"),
    (
        "upload-metadata-9MiB",
        lambda k: upload(edit(adapter(k), {"metrics": json.dumps({"x": "a" * 9 * MiB})})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-metadata-labels-not-json",
        lambda k: upload(edit(adapter(k), {"labels": "[not json"})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-metadata-config-not-json",
        lambda k: upload(edit(adapter(k), {"config": "{oops"})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-metadata-input-not-object",
        lambda k: upload(edit(adapter(k), {"input": "[1, 2]"})),
        422,
        "invalid_adapter",
    ),
    ("upload-no-metadata", lambda k: upload(edit(adapter(k), drop_meta=True)), 422, "invalid_adapter"),
    ("upload-other-format", lambda k: upload(edit(adapter(k), {"format": "something-else"})), 422, "invalid_adapter"),
    ("upload-vpt-method", lambda k: upload(edit(adapter(k), {"method": "vpt"})), 422, "invalid_adapter"),
    (
        "upload-labels-count-mismatch",
        lambda k: upload(edit(adapter(k), {"labels": '["a", "b", "c"]'})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-nan-weight",
        lambda k: upload(edit(adapter(k), tensors=poison("adapters.0.down.weight", float("nan")))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-inf-weight",
        lambda k: upload(edit(adapter(k), tensors=poison("head.bias", float("inf")))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-integer-tensor",
        lambda k: upload(edit(adapter(k), tensors=set_tensor("head.bias", torch.zeros(4, dtype=torch.int32)))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-missing-tensor",
        lambda k: upload(edit(adapter(k), tensors=lambda t: t.pop("head.bias"))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-extra-tensor",
        lambda k: upload(edit(adapter(k), tensors=set_tensor("evil", torch.zeros(1)))),
        422,
        "invalid_adapter",
    ),
    ("upload-truncated", lambda k: upload(adapter(k)[:-64]), 422, "invalid_adapter"),
    (
        "upload-wrong-head-width",
        lambda k: upload(edit(adapter(k), tensors=set_tensor("head.weight", torch.randn(4, 64)))),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-wrong-branch-width",
        lambda k: upload(edit(adapter(k), tensors=narrow_branch)),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-wrong-fingerprint",
        lambda k: upload(edit(adapter(k), {"backbone_fingerprint": "sha256:0123456789abcdef"})),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-wrong-input-size",
        lambda k: upload(edit(adapter(k), spec(adapter(k), size=32))),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-zero-std",
        lambda k: upload(edit(adapter(k), spec(adapter(k), std=[0.0, 0.0, 0.0]))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-nan-mean",
        lambda k: upload(edit(adapter(k), spec(adapter(k), mean=["NaN", 0.5, 0.5]))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-mean-two-values",
        lambda k: upload(edit(adapter(k), spec(adapter(k), mean=[0.5, 0.5]))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-size-float",
        lambda k: upload(edit(adapter(k), spec(adapter(k), size=28.0))),
        422,
        "invalid_adapter",
    ),
    ("upload-name-dotdot-slash", lambda k: upload(adapter(k), "../x"), 422, "invalid_adapter"),
    ("upload-name-slash", lambda k: upload(adapter(k), "a/b"), 422, "invalid_adapter"),
    ("upload-name-encoded-dotdot", lambda k: upload(adapter(k), "%2e%2e"), 422, "invalid_adapter"),
    ("upload-name-unicode", lambda k: upload(adapter(k), "tâche"), 422, "invalid_adapter"),
    (
        "upload-name-in-metadata-traversal",
        lambda k: upload(edit(adapter(k), {"task": "../../evil"})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-not-multipart",
        lambda k: Req(
            url="/adapters", kw={"content": adapter(k), "headers": {"Content-Type": "application/octet-stream"}}
        ),
        415,
        "unsupported_media_type",
    ),
    (
        "upload-no-file-field",
        lambda k: Req(url="/adapters", kw={"data": {"task": "x"}, "files": {"other": ("a", b"x", "x/y")}}),
        422,
        "validation_error",
    ),
    ("upload-over-size-limit", lambda k: upload(b"\0" * (13 * MiB)), 413, "payload_too_large"),
]


@pytest.fixture(scope="module")
def store_before(shared_server: Server) -> set[str]:
    return {p.name for p in shared_server.store.iterdir()}


def test_the_table_covers_twenty_cases_or_more():
    assert len(UPLOADS) >= 20


@cases(UPLOADS)
def test_hostile_upload(
    build: Build, status: int, code: str | None, shared_server: Server, kit: Kit, images, store_before
):
    check_case(shared_server, build(kit), status, code, images)


def test_overflowing_weights_answer_422_not_500(shared_server: Server, kit: Kit, images):
    """Finite weights near the float32 maximum pass the upload checks but overflow to NaN scores: the request
    gets a clear 422, other tasks in the same batches are unaffected, and the task can be deleted."""
    data = edit(adapter(kit), tensors=lambda t: t.__setitem__("head.weight", torch.full_like(t["head.weight"], 3e38)))
    status, body, _ = send(shared_server, upload(data, "overflow"))
    assert status == 201, body
    try:
        status, body, _ = send(shared_server, predict(("image", PNG), task="overflow"))
        assert (status, body["error"]["code"]) == (422, "invalid_adapter"), body
        healthy(shared_server, images)
    finally:
        assert httpx.delete(f"{shared_server.url}/adapters/overflow", timeout=30).status_code == 200


def test_store_untouched_and_no_internal_error(shared_server: Server, kit: Kit, store_before: set[str]):
    """Runs after the cases: no file appeared outside the store or in it, and no 500 was logged. (An accepted
    upload keeps its version under .history/: content-named copies only, no temp file.)"""
    names = {p.name for p in shared_server.store.iterdir()}
    assert names - {".history"} == store_before - {".history"}
    kept = list((shared_server.store / ".history").glob("*/*"))
    assert all(p.name.endswith(".safetensors") and not p.name.startswith(".") for p in kept), kept
    outside = {p.name for p in kit.workdir.iterdir()}
    assert not {n for n in outside if n.endswith(".safetensors") and n != "backbone.safetensors"}, outside
    log = shared_server.log_tail(200_000)
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
