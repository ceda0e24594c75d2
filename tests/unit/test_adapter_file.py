"""The adapter file: an exact round trip, and a clear refusal for every kind of wrong file."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

import adaptformer as af
from tests.support import PETS_CONFIG, PETS_LABELS, PETS_METRICS, adapted, make_vit, read_file, rewrite


def _refused(path: Path, error: type[Exception], *words: str, backbone: nn.Module | None = None) -> Exception:
    """Loads ``path`` expecting ``error`` whose message contains every word; returns the error."""
    with pytest.raises(error) as info:
        af.load_adapter(path, backbone=backbone)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), message
    return info.value


def test_round_trip_is_exact(pets_model: nn.Module, backbone: nn.Module, pets_file: Path) -> None:
    """save_adapter then load_adapter gives back every tensor bit for bit and all metadata."""
    original = af.extract_task(pets_model, "pets", PETS_LABELS, metrics=PETS_METRICS)
    loaded = af.load_adapter(pets_file, backbone=backbone)
    want, got = original.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert loaded.layers == [0, 3]
    assert loaded.info.labels == PETS_LABELS
    assert loaded.info.metrics == PETS_METRICS
    assert loaded.config == PETS_CONFIG
    assert loaded.info.input == af.spec_from_model(backbone)
    assert loaded.info.method == "adaptformer"
    assert loaded.info.fingerprint == af.backbone_fingerprint(backbone)
    assert loaded.info.backbone == "vit_tiny_patch16_224"


@torch.no_grad()
def test_loaded_task_computes_like_the_model(pets_model: nn.Module, backbone: nn.Module, pets_file: Path) -> None:
    """Served from its file, the task gives the trained model's logits."""
    engine = af.MultiTaskViT(make_vit())
    engine.add_task("pets", pets_file)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(torch.stack(engine(x, "pets")), pets_model(x), atol=1e-5)


def test_clip_input_spec_round_trip(backbone: nn.Module, tmp_path: Path) -> None:
    """A video task records modality clip, frames and tubelet."""
    video = adapted(af.video_vit(backbone, frames=4, tubelet=2), af.AdapterConfig(bottleneck=4))
    path = af.save_adapter(video, tmp_path / "clip.safetensors", task="clip")
    spec = af.load_adapter(path).info.input
    assert (spec.modality, spec.frames, spec.tubelet) == ("clip", 4, 2)


def test_linear_probe_file(backbone: nn.Module, tmp_path: Path) -> None:
    """A head-only (linear probe) file is valid: no adapters, no config, method 'linear'."""
    import copy

    probe = af.linear_probe(copy.deepcopy(backbone), 4)
    path = af.save_adapter(probe, tmp_path / "probe.safetensors", task="probe")
    task = af.load_adapter(path, backbone=backbone)
    assert (task.info.method, task.config, task.layers, task.num_classes) == ("linear", None, [], 4)
    assert torch.equal(task.head.weight, probe.head.weight)
    assert set(read_file(path)[0]) == {"head.weight", "head.bias"}


def test_labels_must_match_head(pets_model: nn.Module, tmp_path: Path) -> None:
    """Saving with the wrong number of labels is refused."""
    with pytest.raises(ValueError, match="labels"):
        af.save_adapter(pets_model, tmp_path / "x.safetensors", task="x", labels=["a", "b"])


# -- refusals: the file does not fit this backbone -------------------------------------------------------------


def test_wrong_fingerprint(pets_file: Path) -> None:
    """Same architecture, other weights: IncompatibleAdapterError, check 'fingerprint', naming both."""
    other = make_vit(seed=7)
    err = _refused(pets_file, af.IncompatibleAdapterError, "fingerprint", backbone=other)
    assert err.check == "fingerprint"  # type: ignore[attr-defined]
    assert af.backbone_fingerprint(other) in str(err)


def test_wrong_width_refused(pets_file: Path) -> None:
    """An adapter of a dim-64 model against a dim-96 backbone is refused as incompatible."""
    wide = make_vit(embed_dim=96)
    with pytest.raises(af.IncompatibleAdapterError):
        af.load_adapter(pets_file, backbone=wide)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [({"embed_dim": 96}, ["width 64", "96"]), ({"depth": 2}, ["block 3", "2 blocks"])],
    ids=["width", "depth"],
)
def test_wrong_shapes(pets_file: Path, tmp_path: Path, overrides: dict, words: list[str]) -> None:
    """Fingerprint aside, a branch width or block index the backbone lacks fails the 'shapes' check."""
    other = make_vit(**overrides)
    fp = af.backbone_fingerprint(other)
    forged = rewrite(pets_file, tmp_path / "forged.safetensors", meta=lambda m: {**m, "backbone_fingerprint": fp})
    err = _refused(forged, af.IncompatibleAdapterError, *words, backbone=other)
    assert err.check == "shapes"  # type: ignore[attr-defined]


def test_inconsistent_tensor_shape(pets_file: Path, tmp_path: Path) -> None:
    """A tensor whose shape disagrees with the file's own config is refused, naming the tensor."""

    def widen(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**t, "adapters.0.up.weight": torch.zeros(64, 9)}

    _refused(rewrite(pets_file, tmp_path / "bad.safetensors", tensors=widen), af.AdaptformerError, "adapters.0.up")


# -- refusals: not a valid adapter file ------------------------------------------------------------------------


def _drop(key: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _set(key: str, value: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda m: {**m, key: value}


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        pytest.param(_set("labels", "[cat, dog"), ["labels", "JSON"], id="labels-not-json"),
        pytest.param(_set("config", "{bottleneck: 8}"), ["config", "JSON"], id="config-not-json"),
        pytest.param(_set("input", "not json"), ["input", "JSON"], id="input-not-json"),
        pytest.param(
            _drop("backbone_fingerprint"), ["lacks", "backbone_fingerprint"], id="backbone_fingerprint-missing"
        ),
        pytest.param(_drop("labels"), ["lacks", "labels"], id="labels-missing"),
        pytest.param(_drop("format"), ["lacks", "format"], id="format-missing"),
        pytest.param(_drop("config"), ["config"], id="config-missing"),
        pytest.param(_set("format", "peft-lora"), ["format", "peft-lora"], id="format=peft-lora"),
        pytest.param(_set("format_version", "99"), ["version", "99"], id="format_version=99"),
        pytest.param(_set("method", "vpt"), ["vpt"], id="method=vpt"),
        pytest.param(_set("method", "full"), ["full"], id="method=full"),
        pytest.param(_set("labels", '["a", "b"]'), ["3 outputs", "2 labels"], id="labels-count"),
        pytest.param(_set("labels", "[]"), ["labels"], id="labels-empty"),
        pytest.param(_set("labels", '"cat"'), ["labels"], id="labels-not-list"),
        pytest.param(_set("config", '{"bottleneck": 9999}'), ["config", "bottleneck"], id="config-invalid"),
        pytest.param(_set("layers", "[0, -1]"), ["layers"], id="layers-negative"),
        pytest.param(_set("input", '{"modality": "audio"}'), ["input", "modality"], id="input-invalid"),
        pytest.param(_set("layers", "[true, 3]"), ["layers"], id="layers-bool"),
        pytest.param(_set("layers", "[0, 0, 3]"), ["layers", "distinct"], id="layers-repeated"),
        pytest.param(_set("labels", '["\\ud800", "b", "c"]'), ["labels", "surrogate"], id="labels-surrogate"),
        pytest.param(_set("labels", json.dumps(["x" * 300, "b", "c"])), ["label", "256"], id="label-too-long"),
        pytest.param(_set("metrics", "[" * 100 + "]" * 100), ["metrics", "nested"], id="metrics-nested"),
        pytest.param(_set("metrics", '{"top1": NaN}'), ["metrics", "JSON"], id="metrics-nan"),
        pytest.param(_set("metrics", json.dumps({"x": "y" * 70_000})), ["metrics", "too large"], id="metrics-large"),
        pytest.param(_set("config", '{"bottleneck": 8, "scale": 1e999}'), ["config", "JSON"], id="config-inf"),
        pytest.param(_set("backbone_params", "\u00b2"), ["backbone_params", "decimal"], id="params-not-decimal"),
        pytest.param(_set("input", '{"size": 100000}'), ["input", "size"], id="input-huge"),
    ],
)
def test_bad_metadata_refused(pets_file: Path, tmp_path: Path, edit: Callable, words: list[str]) -> None:
    """Missing, malformed or foreign metadata: AdapterFormatError saying which field is wrong."""
    _refused(rewrite(pets_file, tmp_path / "bad.safetensors", meta=edit), af.AdapterFormatError, *words)


def test_no_metadata_refused(pets_file: Path, tmp_path: Path) -> None:
    """A plain safetensors file without metadata is not an adapter file."""
    path = tmp_path / "plain.safetensors"
    path.write_bytes(st_save(read_file(pets_file)[0]))
    _refused(path, af.AdapterFormatError, "no metadata")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_refused(pets_file: Path, tmp_path: Path, value: float) -> None:
    """A NaN or infinite weight anywhere is refused, naming the tensor."""

    def poison(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = t["adapters.3.down.weight"].clone()
        w[1, 2] = value
        return {**t, "adapters.3.down.weight": w}

    bad = rewrite(pets_file, tmp_path / "nan.safetensors", tensors=poison)
    _refused(bad, af.AdapterFormatError, "NaN or infinite", "adapters.3.down.weight")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda t: {**t, "vpt.prompts": torch.zeros(4, 64)}, ["unexpected", "vpt.prompts"]),
        (lambda t: {**t, "adapters.1.down.weight": torch.zeros(8, 64)}, ["unexpected", "adapters.1"]),
        (lambda t: {k: v for k, v in t.items() if k != "head.bias"}, ["head.bias", "missing"]),
        (lambda t: {k: v for k, v in t.items() if k != "adapters.0.up.bias"}, ["adapters.0.up.bias", "missing"]),
        (lambda t: {**t, "head.bias": torch.zeros(3, dtype=torch.int64)}, ["head.bias", "dtype"]),
    ],
    ids=["extra-tensor", "extra-block", "no-head-bias", "no-up-bias", "int-tensor"],
)
def test_bad_tensors_refused(pets_file: Path, tmp_path: Path, edit: Callable, words: list[str]) -> None:
    """Tensors the metadata does not account for, or missing ones, are refused by name."""
    _refused(rewrite(pets_file, tmp_path / "bad.safetensors", tensors=edit), af.AdapterFormatError, *words)


def _pickle_file(path: Path) -> None:
    torch.save({"head.weight": torch.zeros(3, 64)}, path)


@pytest.mark.parametrize(
    ("write", "words"),
    [
        (lambda p: p.write_bytes(b""), ["not a safetensors file", "0 bytes"]),
        (lambda p: p.write_bytes(b"\x01\x02\x03"), ["not a safetensors file"]),
        (lambda p: p.write_bytes(bytes(range(256)) * 8), ["not a safetensors file"]),
        (_pickle_file, ["not a safetensors file", "pickle"]),
        (lambda p: p.write_bytes(struct.pack("<Q", 2**62) + b"{}"), ["not a safetensors file", "header"]),
        (lambda p: p.write_bytes(struct.pack("<Q", 9 * 2**20) + b" " * (9 * 2**20)), ["header"]),
        (lambda p: p.write_bytes(struct.pack("<Q", 5) + b"\xff\xfe{}}"), ["not JSON"]),
        (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), ["JSON object"]),
        (lambda p: p.write_bytes(json.dumps({"a": 1}).encode()), ["not a safetensors file"]),
    ],
    ids=[
        "empty",
        "three-bytes",
        "random",
        "torch-pickle",
        "huge-header",
        "header-over-limit",
        "binary",
        "list",
        "json",
    ],
)
def test_not_safetensors_refused(tmp_path: Path, write: Callable[[Path], object], words: list[str]) -> None:
    """Anything that is not a safetensors file is an AdapterFormatError saying so (never unpickled)."""
    path = tmp_path / "x.safetensors"
    write(path)
    _refused(path, af.AdapterFormatError, *words)


def test_missing_file() -> None:
    """A path that does not exist says so."""
    with pytest.raises(FileNotFoundError, match="nowhere"):
        af.load_adapter("/nowhere/task.safetensors")


def test_error_kinds_tell_broken_from_incomplete_and_newer(pets_file: Path) -> None:
    """A store keeps files that may still grow or that a newer version wrote; only broken ones are moved aside."""
    from adaptformer.adapter_header import parse_header
    from adaptformer.metadata import NewerFormatError
    from adaptformer.safetensors_header import IncompleteFile

    data = pets_file.read_bytes()
    parse_header(data, "ok", size=len(data))
    with pytest.raises(IncompleteFile):
        parse_header(data[:-10], "cut", size=len(data) - 10)
    with pytest.raises(IncompleteFile):
        parse_header(data[:20], "header cut")
    newer = rewrite(pets_file, pets_file.with_name("newer.safetensors"), meta=_set("format_version", "7"))
    with pytest.raises(NewerFormatError):
        parse_header(newer.read_bytes(), "newer")
    garbage = rewrite(pets_file, pets_file.with_name("garbage.safetensors"), meta=_set("format_version", "x"))
    with pytest.raises(af.AdapterFormatError) as info:
        parse_header(garbage.read_bytes(), "garbage")
    assert not isinstance(info.value, (IncompleteFile, NewerFormatError))


def test_the_library_never_writes_a_file_it_refuses(pets_model: nn.Module, tmp_path: Path) -> None:
    """Labels over the limit are refused when saving, not only when loading."""
    with pytest.raises(af.AdapterFormatError, match="256"):
        af.save_adapter(pets_model, tmp_path / "x.safetensors", task="x", labels=["a" * 300, "b", "c"])
    assert not (tmp_path / "x.safetensors").exists()


def test_weights_beyond_float32_are_refused(pets_file: Path, tmp_path: Path) -> None:
    """1e300 is finite in a float64 file but infinite in the float32 task: refused, naming the tensor."""

    def widen(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = t["head.weight"].double()
        w[0, 0] = 1e300
        return {**t, "head.weight": w}

    _refused(rewrite(pets_file, tmp_path / "big.safetensors", tensors=widen), af.AdapterFormatError, "head.weight")


def test_input_spec_refuses_what_the_server_refuses() -> None:
    """InputSpec itself refuses a spec no request could be served with, so the library never writes one."""
    for bad, words in [
        ({"size": 28.0}, "size"),
        ({"size": 0}, "size"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"std": (0.5, float("nan"), 0.5)}, "std"),
        ({"frames": 5000, "modality": "clip"}, "frames"),
        ({"frames": 3, "tubelet": 2, "modality": "clip"}, "multiple"),
        ({"interpolation": "lanczos"}, "interpolation"),
    ]:
        with pytest.raises(ValueError, match=words):
            af.InputSpec(**bad)
    assert af.InputSpec(size=28, frames=4, tubelet=2, modality="clip").frames == 4
