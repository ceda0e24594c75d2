"""What a caller must know travels with the adapter: a one-line description and the expected input."""

from __future__ import annotations

from importlib import resources

import pytest
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import adaptformer as af
from adaptformer.adapter_file import task_from_bytes, task_to_bytes
from adaptformer.adapter_header import read_metadata
from adaptformer.errors import AdapterFormatError
from adaptformer.task import extract_task
from tests.support import make_vit


def _task(**info: str):
    task = extract_task(af.linear_probe(make_vit(), 3), "ink", ["a", "b", "c"])
    for k, v in info.items():
        setattr(task.info, k, v)
    return task


def _with_meta(data: bytes, **changes: str) -> bytes:
    return st_save(st_load(data), metadata={**read_metadata(data).to_strings(), **changes})


def test_description_and_input_note_round_trip():
    data = task_to_bytes(_task(description="digit written in ink", input_note="black ink on white paper"))
    info = task_from_bytes(data).info
    assert (info.description, info.input_note) == ("digit written in ink", "black ink on white paper")


def test_files_without_them_load_with_empty_texts():
    data = task_to_bytes(_task())
    written = read_metadata(data).to_strings()
    assert "description" not in written and "input_note" not in written
    info = task_from_bytes(data).info
    assert (info.description, info.input_note) == ("", "")


@pytest.mark.parametrize("text", ["two\nlines", "x" * 301, "tab\there"])
def test_a_description_is_one_short_printable_line(text):
    with pytest.raises(AdapterFormatError, match="one line of printable text"):
        task_from_bytes(_with_meta(task_to_bytes(_task()), description=text))
    with pytest.raises(AdapterFormatError, match="one line of printable text"):
        task_to_bytes(_task(input_note=text))  # never written either


def test_demo_adapters_carry_both():
    demo = [p for p in (resources.files("adaptformer") / "demo").iterdir() if p.name.endswith(".safetensors")]
    assert len(demo) >= 4
    for path in demo:
        info = af.load_adapter(str(path)).info
        assert info.description and info.input_note, path.name
