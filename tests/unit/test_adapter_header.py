"""The adapter file's header: torch-free, one bounded reader, a lossless record, the shape and fit rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from torch import nn

import adaptformer as af
from adaptformer.adapter_file import task_from_bytes
from adaptformer.adapter_header import Header, parse_header, read_header
from adaptformer.fit import BackboneSpec, branch_shapes
from adaptformer.safetensors_header import IncompleteFile, read_safetensors_header
from tests.support import PETS_LABELS, make_vit, rewrite, run_python


def test_header_module_needs_no_torch(pets_file: Path) -> None:
    """The store and ``adaptformer inspect`` read and check headers with torch blocked from importing."""
    code = (
        "import adaptformer.atomic\n"
        "from adaptformer.adapter_header import read_header\n"
        "from adaptformer.fit import BackboneSpec\n"
        f"h = read_header({str(pets_file)!r})\n"
        "spec = BackboneSpec(h.metadata.backbone_fingerprint, depth=4, embed_dim=64, num_features=64)\n"
        "spec.check_header(h, 'pets')\n"
        "print(h.metadata.task, sorted(h.metadata.labels))\n"
    )
    out = run_python(code, blocked=("torch", "timm", "safetensors.torch", "numpy", "PIL"))
    assert out.split() == ["pets", "['cat',", "'dog',", "'emu']"]


def test_one_reader_for_paths_files_and_bytes(pets_file: Path, tmp_path: Path) -> None:
    """read_header gives the same checked header from a path, an open file or the bytes; size is always checked."""
    data = pets_file.read_bytes()
    with pets_file.open("rb") as f:
        headers = [read_header(pets_file), read_header(f), read_header(data)]
    assert headers[0] == headers[1] == headers[2]
    assert headers[0].data_end == len(data)
    assert read_safetensors_header(pets_file)["__metadata__"]["task"] == "pets"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-4])
    with pytest.raises(IncompleteFile, match=r"cut\.safetensors"):
        read_header(cut)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_header(tmp_path / "nowhere.safetensors")


def test_a_header_record_is_lossless(pets_file: Path) -> None:
    """The store caches checked headers as JSON: the record, through JSON text, gives back an equal header."""
    header = read_header(pets_file)
    record = json.loads(json.dumps(header.to_json()))
    assert Header.from_json(record) == header
    assert Header.from_json(record).params == header.params
    for broken in ({}, {**record, "shapes": []}, {**record, "metadata": {"method": "linear"}}):
        with pytest.raises((KeyError, TypeError, ValueError, AttributeError)):
            Header.from_json(broken)


def test_task_from_bytes_takes_a_parsed_header(pets_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that parsed the header already (the server) passes it in, and it is not parsed again."""
    data = pets_file.read_bytes()
    header = parse_header(data, "pets", size=len(data))
    want = task_from_bytes(data, "pets")

    def refuse(*_: object, **__: object) -> Header:
        raise AssertionError("parsed again")

    monkeypatch.setattr("adaptformer.adapter_file.parse_header", refuse)
    got = task_from_bytes(data, "pets", header=header)
    assert got.info == want.info and got.layers == want.layers == [0, 3]
    assert all(v.equal(want.state_dict()[k]) for k, v in got.state_dict().items())


def test_one_labels_rule_for_every_path(pets_model: nn.Module, pets_file: Path) -> None:
    """One label per head output, refused alike when a task is taken out, saved, parsed and loaded."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    with pytest.raises(af.AdapterFormatError, match="head has 3 outputs but metadata lists 2 labels"):
        af.extract_task(pets_model, "pets", ["a", "b"])
    task = af.load_adapter(pets_file)
    with pytest.raises(af.AdapterFormatError, match="head has 3 outputs but metadata lists 2 labels"):
        af.save_adapter(task, pets_file.with_name("x.safetensors"), labels=["a", "b"])
    assert task.info.labels == PETS_LABELS  # refused before the task was changed
    data = pets_file.read_bytes()
    meta = read_safetensors_header(data)["__metadata__"]
    del meta["num_classes"]
    forged = st_save(st_load(data), metadata={**meta, "labels": '["a", "b"]'})
    with pytest.raises(af.AdapterFormatError, match=r"head has 3 outputs \(shapes \[3, 64\] and \[3\]\) but metadata"):
        parse_header(forged)


@pytest.mark.parametrize(
    "config",
    [
        af.AdapterConfig(bottleneck=8),
        af.AdapterConfig(bottleneck=3, learnable_scale=True),
        af.AdapterConfig(adapter_input="own_ln"),
        af.AdapterConfig(mode="sequential", learnable_scale=True),
        af.AdapterConfig(mode="sequential", adapter_input="raw"),
    ],
)
def test_header_branch_shapes_are_the_modules(config: af.AdapterConfig) -> None:
    """The header checks expect exactly the tensors an AdaptMLP has (the torch-free rule and the module agree)."""
    module = {name: tuple(t.shape) for name, t in af.AdaptMLP(48, config).state_dict().items()}
    assert branch_shapes(48, config) == module


def _failed_check(check: Callable[[], object]) -> str | None:
    try:
        check()
    except af.IncompatibleAdapterError as e:
        return e.check
    return None


def test_header_and_task_checks_agree(pets_file: Path, tmp_path: Path) -> None:
    """check_header (before the tensors are read) and check_task (after) accept and refuse the same files."""
    for overrides, expected in (
        ({}, None),
        ({"embed_dim": 96}, "shapes"),
        ({"depth": 2}, "shapes"),
        ({}, "fingerprint"),
    ):
        spec = BackboneSpec.of(make_vit(**overrides))
        fp = spec.fingerprint if expected != "fingerprint" else "sha256:other"
        forged = rewrite(pets_file, tmp_path / "f.safetensors", meta=lambda m, fp=fp: {**m, "backbone_fingerprint": fp})
        header, task = read_header(forged), af.load_adapter(forged)
        outcomes = (
            _failed_check(lambda: spec.check_header(header, "f")),  # noqa: B023 (called at once)
            _failed_check(lambda: spec.check_task(task)),  # noqa: B023
        )
        assert outcomes == (expected, expected), overrides
