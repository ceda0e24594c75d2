"""Fuzzed adapter files (Hypothesis): the reader raises only its typed errors, the upload route never answers 500,
and a server restarted on what the uploads left in the store accepts every stored file.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
from contextlib import suppress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptformer.adapter_file import task_from_bytes
from adaptformer.adapter_header import parse_header
from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError
from tests.reliability.tampered.files import (
    IMAGE,
    demo,
    join,
    make_app,
    nested,
    quarantined,
    split,
    tasks_of,
)
from tests.support import serving, upload_files

# -- Hypothesis: the reader never raises anything but its typed errors ------------------------------------------
TYPED = (AdapterFormatError, IncompatibleAdapterError)
UPLOADS = itertools.count()
BASES = {"fashion": demo("fashion"), "digits": demo("digits")}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
META_KEYS = ["format", "format_version", "task", "method", "labels", "input", "backbone", "backbone_fingerprint"]
meta_keys = st.sampled_from([*META_KEYS, "metrics", "layers", "config", "num_classes", "backbone_params", "created"])
meta_values = st.one_of(
    st.sampled_from([nested(2000), '"\\ud800"', '["\\udfff"]', "[true, 1]", '"5"', "5", "[-1]", "[99]", "1e999"]),
    json_values.map(json.dumps),
    st.text(max_size=40),
)
tensor_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X"]) | json_values,
        "shape": st.lists(st.integers(-2, 2**40) | st.booleans(), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-5, 2**62), min_size=0, max_size=3) | json_values,
    }
)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A demo file with random edits to its metadata and tensor entries, and now and then to its declared header
    length or its bytes (most examples keep a well-formed header, so that the checks behind it are reached)."""
    data = BASES[draw(st.sampled_from(sorted(BASES)))]
    header, body = split(data)
    meta = header["__metadata__"]
    for key in draw(st.lists(meta_keys, min_size=1, max_size=3)):
        if draw(st.integers(0, 4)) == 4:  # Hypothesis prefers small numbers: 0..3 (the likely case) edits
            meta.pop(key, None)
        else:
            meta[key] = draw(meta_values)
    names = sorted(k for k in header if k != "__metadata__")
    for name in draw(st.lists(st.sampled_from(names), max_size=2)):
        header[name] = draw(tensor_entries | json_values)
    if draw(st.integers(0, 19)) == 19:
        header["__metadata__"] = draw(json_values)
    raw = json.dumps(header).encode()
    out = bytearray(join(raw, body))
    kind = draw(st.integers(0, 9))  # 0..5: the bytes as written
    if kind == 6:  # a random declared header length
        out[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    elif kind == 7:  # flipped bytes in the header
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(8, 8 + len(raw) - 1))
            out[i] = draw(st.integers(0, 255))
    elif kind == 8:  # cut anywhere
        del out[draw(st.integers(0, len(out))) :]
    elif kind == 9:  # a NaN in the tensors
        i = draw(st.integers(8 + len(raw), len(out) - 1))
        out[i : i + 4] = b"\xff\xff\xff\x7f"
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_reader_fuzz_raises_only_typed_errors(data: bytes):
    for read in (parse_header, task_from_bytes):
        with suppress(*TYPED):  # anything else fails the test
            read(data, "fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_upload_fuzz_never_500_and_the_store_holds_only_what_start_up_accepts(live, data):
    client, _ = live
    r = client.post("/adapters", **upload_files(data, task=f"fuzz{next(UPLOADS)}"))
    assert r.status_code in (201, 409, 413, 415, 422), (r.status_code, r.text[:300])


async def test_after_the_upload_fuzz_a_restart_accepts_every_stored_file(live, tmp_path):
    _, store = live
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    stored = sorted(p.name[: -len(".safetensors")] for p in copy.glob("*.safetensors"))
    app = make_app(copy)
    async with serving(app) as client:
        assert await tasks_of(client) == stored
        assert quarantined(app) == 0
        for task in stored:  # and each one pages in (an input that does not suit the task is a 400, not a 422)
            r = await client.post(f"/predict?task={task}", **IMAGE)
            # Finite weights whose scores overflow on this input (the fuzz finds some) paged in and ran: the 422
            # that names the overflow, never a failure to load.
            overflow = r.status_code == 422 and "produced non-finite scores" in r.json()["error"]["message"]
            assert r.status_code in (200, 400) or overflow, (task, r.text)
