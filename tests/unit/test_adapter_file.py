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
from tests.support import adapted, make_vit, read_file, rewrite

LABELS = ["cat", "dog", "emu"]
METRICS = {"top1": 0.875, "epochs": 3}
CONFIG = af.AdapterConfig(bottleneck=8, scale=0.5, learnable_scale=True, layers=[0, -1], adapter_input="own_ln")


@pytest.fixture(scope="module")
def model(backbone: nn.Module) -> nn.Module:
    """An adapted model with random non-zero adapters and a 3-class head."""
    return adapted(backbone, CONFIG, num_classes=len(LABELS))


@pytest.fixture
def good_file(model: nn.Module, tmp_path: Path) -> Path:
    return af.save_adapter(model, tmp_path / "pets.safetensors", task="pets", labels=LABELS, metrics=METRICS)


def _refused(path: Path, error: type[Exception], *words: str, backbone: nn.Module | None = None) -> Exception:
    """Loads ``path`` expecting ``error`` whose message contains every word; returns the error."""
    with pytest.raises(error) as info:
        af.load_adapter(path, backbone=backbone)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), message
    return info.value


def test_round_trip_is_exact(model: nn.Module, backbone: nn.Module, good_file: Path) -> None:
    """save_adapter then load_adapter gives back every tensor bit for bit and all metadata."""
    original = af.extract_task(model, "pets", LABELS, metrics=METRICS)
    loaded = af.load_adapter(good_file, backbone=backbone)
    want, got = original.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert loaded.layers == [0, 3]
    assert loaded.info.labels == LABELS
    assert loaded.info.metrics == METRICS
    assert loaded.config == CONFIG
    assert loaded.info.input == af.spec_from_model(backbone)
    assert loaded.info.method == "adaptformer"
    assert loaded.info.fingerprint == af.backbone_fingerprint(backbone)
    assert loaded.info.backbone == "vit_tiny_patch16_224"


@torch.no_grad()
def test_loaded_task_computes_like_the_model(model: nn.Module, backbone: nn.Module, good_file: Path) -> None:
    """Served from its file, the task gives the trained model's logits."""
    engine = af.MultiTaskViT(make_vit())
    engine.add_task("pets", good_file)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(torch.stack(engine(x, "pets")), model(x), atol=1e-5)


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


def test_labels_must_match_head(model: nn.Module, tmp_path: Path) -> None:
    """Saving with the wrong number of labels is refused."""
    with pytest.raises(ValueError, match="labels"):
        af.save_adapter(model, tmp_path / "x.safetensors", task="x", labels=["a", "b"])


# -- refusals: the file does not fit this backbone -------------------------------------------------------------


def test_wrong_fingerprint(good_file: Path) -> None:
    """Same architecture, other weights: IncompatibleAdapterError, check 'fingerprint', naming both."""
    other = make_vit(seed=7)
    err = _refused(good_file, af.IncompatibleAdapterError, "fingerprint", backbone=other)
    assert err.check == "fingerprint"  # type: ignore[attr-defined]
    assert af.backbone_fingerprint(other) in str(err)


def test_wrong_width_refused(good_file: Path) -> None:
    """An adapter of a dim-64 model against a dim-96 backbone is refused as incompatible."""
    wide = make_vit(embed_dim=96)
    with pytest.raises(af.IncompatibleAdapterError):
        af.load_adapter(good_file, backbone=wide)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [({"embed_dim": 96}, ["width 64", "96"]), ({"depth": 2}, ["block 3", "2 blocks"])],
    ids=["width", "depth"],
)
def test_wrong_shapes(good_file: Path, tmp_path: Path, overrides: dict, words: list[str]) -> None:
    """Fingerprint aside, a branch width or block index the backbone lacks fails the 'shapes' check."""
    other = make_vit(**overrides)
    fp = af.backbone_fingerprint(other)
    forged = rewrite(good_file, tmp_path / "forged.safetensors", meta=lambda m: {**m, "backbone_fingerprint": fp})
    err = _refused(forged, af.IncompatibleAdapterError, *words, backbone=other)
    assert err.check == "shapes"  # type: ignore[attr-defined]


def test_inconsistent_tensor_shape(good_file: Path, tmp_path: Path) -> None:
    """A tensor whose shape disagrees with the file's own config is refused, naming the tensor."""

    def widen(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**t, "adapters.0.up.weight": torch.zeros(64, 9)}

    _refused(rewrite(good_file, tmp_path / "bad.safetensors", tensors=widen), af.AdaptformerError, "adapters.0.up")


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
def test_bad_metadata_refused(good_file: Path, tmp_path: Path, edit: Callable, words: list[str]) -> None:
    """Missing, malformed or foreign metadata: AdapterFormatError saying which field is wrong."""
    _refused(rewrite(good_file, tmp_path / "bad.safetensors", meta=edit), af.AdapterFormatError, *words)


def test_no_metadata_refused(good_file: Path, tmp_path: Path) -> None:
    """A plain safetensors file without metadata is not an adapter file."""
    path = tmp_path / "plain.safetensors"
    path.write_bytes(st_save(read_file(good_file)[0]))
    _refused(path, af.AdapterFormatError, "no metadata")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_refused(good_file: Path, tmp_path: Path, value: float) -> None:
    """A NaN or infinite weight anywhere is refused, naming the tensor."""

    def poison(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = t["adapters.3.down.weight"].clone()
        w[1, 2] = value
        return {**t, "adapters.3.down.weight": w}

    bad = rewrite(good_file, tmp_path / "nan.safetensors", tensors=poison)
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
def test_bad_tensors_refused(good_file: Path, tmp_path: Path, edit: Callable, words: list[str]) -> None:
    """Tensors the metadata does not account for, or missing ones, are refused by name."""
    _refused(rewrite(good_file, tmp_path / "bad.safetensors", tensors=edit), af.AdapterFormatError, *words)


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


def test_error_kinds_tell_broken_from_incomplete_and_newer(good_file: Path) -> None:
    """A store keeps files that may still grow or that a newer version wrote; only broken ones are moved aside."""
    from adaptformer.adapter_file import IncompleteFile, NewerFormatError, parse_header

    data = good_file.read_bytes()
    parse_header(data, "ok", size=len(data))
    with pytest.raises(IncompleteFile):
        parse_header(data[:-10], "cut", size=len(data) - 10)
    with pytest.raises(IncompleteFile):
        parse_header(data[:20], "header cut")
    newer = rewrite(good_file, good_file.with_name("newer.safetensors"), meta=_set("format_version", "7"))
    with pytest.raises(NewerFormatError):
        parse_header(newer.read_bytes(), "newer")
    garbage = rewrite(good_file, good_file.with_name("garbage.safetensors"), meta=_set("format_version", "x"))
    with pytest.raises(af.AdapterFormatError) as info:
        parse_header(garbage.read_bytes(), "garbage")
    assert not isinstance(info.value, (IncompleteFile, NewerFormatError))


def test_the_library_never_writes_a_file_it_refuses(model: nn.Module, tmp_path: Path) -> None:
    """Labels over the limit are refused when saving, not only when loading."""
    with pytest.raises(af.AdapterFormatError, match="256"):
        af.save_adapter(model, tmp_path / "x.safetensors", task="x", labels=["a" * 300, "b", "c"])
    assert not (tmp_path / "x.safetensors").exists()


def test_weights_beyond_float32_are_refused(good_file: Path, tmp_path: Path) -> None:
    """1e300 is finite in a float64 file but infinite in the float32 task: refused, naming the tensor."""

    def widen(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = t["head.weight"].double()
        w[0, 0] = 1e300
        return {**t, "head.weight": w}

    _refused(rewrite(good_file, tmp_path / "big.safetensors", tensors=widen), af.AdapterFormatError, "head.weight")


# -- one header module: torch-free, one bounded reader, the fit rules ------------------------------------------


def test_header_module_needs_no_torch(good_file: Path) -> None:
    """The store and ``adaptformer inspect`` read and check headers with torch blocked from importing."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'timm', 'safetensors.torch', 'numpy', 'PIL'):\n"
        "    sys.modules[name] = None\n"
        "from adaptformer.adapter_header import BackboneSpec, read_header\n"
        f"h = read_header({str(good_file)!r})\n"
        "spec = BackboneSpec(h.meta['backbone_fingerprint'], depth=4, embed_dim=64, num_features=64)\n"
        "spec.check_header(h, 'pets')\n"
        "print(h.meta['task'], sorted(h.meta['labels']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pets", "['cat',", "'dog',", "'emu']"]


def test_one_reader_for_paths_files_and_bytes(good_file: Path, tmp_path: Path) -> None:
    """read_header gives the same checked header from a path, an open file or the bytes; size is always checked."""
    from adaptformer.adapter_header import IncompleteFile, read_header, read_safetensors_header

    data = good_file.read_bytes()
    with good_file.open("rb") as f:
        headers = [read_header(good_file), read_header(f), read_header(data)]
    assert headers[0] == headers[1] == headers[2]
    assert headers[0].data_end == len(data)
    assert read_safetensors_header(good_file)["__metadata__"]["task"] == "pets"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-4])
    with pytest.raises(IncompleteFile, match=r"cut\.safetensors"):
        read_header(cut)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_header(tmp_path / "nowhere.safetensors")


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
    from adaptformer.adapter_header import branch_shapes

    module = {name: tuple(t.shape) for name, t in af.AdaptMLP(48, config).state_dict().items()}
    assert branch_shapes(48, config) == module


def _failed_check(check: Callable[[], object]) -> str | None:
    try:
        check()
    except af.IncompatibleAdapterError as e:
        return e.check
    return None


def test_header_and_task_checks_agree(good_file: Path, tmp_path: Path) -> None:
    """check_header (before the tensors are read) and check_task (after) accept and refuse the same files."""
    from adaptformer.adapter_header import BackboneSpec, read_header

    for overrides, expected in (
        ({}, None),
        ({"embed_dim": 96}, "shapes"),
        ({"depth": 2}, "shapes"),
        ({}, "fingerprint"),
    ):
        spec = BackboneSpec.of(make_vit(**overrides))
        fp = spec.fingerprint if expected != "fingerprint" else "sha256:other"
        forged = rewrite(good_file, tmp_path / "f.safetensors", meta=lambda m, fp=fp: {**m, "backbone_fingerprint": fp})
        header, task = read_header(forged), af.load_adapter(forged)
        outcomes = (
            _failed_check(lambda: spec.check_header(header, "f")),  # noqa: B023 (called at once)
            _failed_check(lambda: spec.check_task(task)),  # noqa: B023
        )
        assert outcomes == (expected, expected), overrides


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
