"""The metadata model: every rule refuses with its message, and the string map and the JSON record round-trip."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from torch import nn

import adaptformer as af
from adaptformer.errors import AdapterFormatError
from adaptformer.metadata import FIELDS, REQUIRED_KEYS, AdapterMetadata, NewerFormatError
from tests.support import adapted, read_file

Strings = dict[str, str]

VALID: Strings = {
    "format": "adaptformer-adapter",
    "format_version": "2",
    "task": "pets",
    "method": "adaptformer",
    "labels": json.dumps(["cat", "dog", "emu"]),
    "input": af.InputSpec(size=32).to_json(),
    "backbone": "tiny-test-vit",
    "backbone_fingerprint": "sha256:0123456789abcdef",
    "config": af.AdapterConfig(bottleneck=8).to_json(),
    "metrics": json.dumps({"top1": 0.875}),
    "layers": json.dumps([0, 3]),
    "num_classes": "3",
    "backbone_params": "5000",
    "created": "2024-01-01T00:00:00+00:00",
    "description": "which pet",
    "input_note": "a photo",
}
LINEAR: Strings = {**{k: v for k, v in VALID.items() if k != "config"}, "method": "linear", "layers": "[]"}
CLIP: Strings = {
    **VALID,
    "input": af.InputSpec(size=32, modality="clip", frames=4, tubelet=2).to_json(),
    "temporal": json.dumps({"diff": True, "time": False, "mix": True}),
}


def _set(**changes: str) -> Callable[[Strings], Strings]:
    return lambda m: {**m, **changes}


def _drop(*keys: str) -> Callable[[Strings], Strings]:
    return lambda m: {k: v for k, v in m.items() if k not in keys}


def _refused(raw: object, message: str, error: type[Exception] = AdapterFormatError) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        AdapterMetadata.from_strings(raw, "f")


@pytest.mark.parametrize(
    "strings",
    [VALID, LINEAR, CLIP, {**VALID, "note": "kept as it is"}, {**LINEAR, "config": "{}"}],
    ids=["adaptformer", "linear", "clip", "unknown-key", "linear-with-config"],
)
def test_the_string_map_round_trips(strings: Strings) -> None:
    """What a file holds comes back from the model key for key, and the JSON record gives back the same model."""
    metadata = AdapterMetadata.from_strings(strings, "f")
    assert metadata.to_strings() == strings
    assert AdapterMetadata.from_strings(metadata.to_strings(), "f") == metadata
    assert AdapterMetadata.from_json(json.loads(json.dumps(metadata.to_json()))) == metadata


def test_the_model_is_typed() -> None:
    """JSON fields are decoded into their types; what a file may leave out has its default."""
    metadata = AdapterMetadata.from_strings(CLIP, "f")
    assert metadata.labels == ("cat", "dog", "emu") and metadata.num_classes == 3
    assert metadata.input == af.InputSpec(size=32, modality="clip", frames=4, tubelet=2)
    assert metadata.config == af.AdapterConfig(bottleneck=8) and metadata.layers == (0, 3)
    assert (metadata.metrics, metadata.temporal) == ({"top1": 0.875}, {"diff": True, "time": False, "mix": True})
    assert (metadata.backbone_params, metadata.description, metadata.input_note) == (5000, "which pet", "a photo")
    linear = AdapterMetadata.from_strings({**LINEAR, "config": "{}", "metrics": "[1]"}, "f")
    assert (linear.config, linear.layers, linear.metrics, linear.extra) == (None, (), {}, {"config": "{}"})
    bare = AdapterMetadata.from_strings({k: v for k, v in LINEAR.items() if k in REQUIRED_KEYS}, "f")
    assert (bare.layers, bare.metrics, bare.temporal, bare.backbone_params, bare.created) == ((), {}, None, 0, "")


def test_a_written_file_round_trips(backbone: nn.Module, tmp_path: Path) -> None:
    """The map save_adapter writes is the model's map, exactly."""
    path = af.save_adapter(adapted(backbone, af.AdapterConfig(bottleneck=4)), tmp_path / "a.safetensors", task="a")
    _, raw = read_file(path)
    assert AdapterMetadata.from_strings(raw, "a").to_strings() == raw


def test_a_newer_version_is_told_apart() -> None:
    """A store keeps a newer version's file (NewerFormatError); any other version is broken; version 1 reads."""
    _refused(
        _set(format_version="4")(VALID),
        "f: adapter format version '4'; this version reads '1', '2', '3'",
        NewerFormatError,
    )
    with pytest.raises(AdapterFormatError) as info:
        AdapterMetadata.from_strings(_set(format_version="x")(VALID), "f")
    assert not isinstance(info.value, NewerFormatError)
    assert AdapterMetadata.from_strings(_set(format_version="1")(VALID), "f").format_version == "1"


LONG_KEY = "k" * 65
LAYERS = "f: metadata 'layers' must be a JSON list of distinct block indices (integers 0..1023)"
ONE_LINE = "must be one line of printable text of at most 300 characters"
RULES: list[tuple[str, Callable[[Strings], object], str]] = [
    (
        "no-map",
        lambda m: None,
        f"f: the safetensors file has no metadata; an adapter file carries {', '.join(REQUIRED_KEYS)}",
    ),
    (
        "too-many-keys",
        lambda m: {**m, **{f"k{i}": "" for i in range(64)}},
        "f: metadata has 80 fields; the limit is 64",
    ),
    ("not-a-string", lambda m: {**m, "task": 5}, "f: metadata field 'task' is not a string"),
    ("key-too-long", _set(**{LONG_KEY: ""}), f"f: metadata field {LONG_KEY[:64]!r} is too large (limit 16,384 bytes)"),
    ("field-too-large", _set(task="x" * 16_385), "f: metadata field 'task' is too large (limit 16,384 bytes)"),
    (
        "metrics-too-large",
        _set(metrics=json.dumps("x" * 65_536)),
        "f: metadata field 'metrics' is too large (limit 65,536 bytes)",
    ),
    (
        "labels-too-large",
        _set(labels=json.dumps(["x" * 200] * 11_000)),
        "f: metadata field 'labels' is too large (limit 2,097,152 bytes)",
    ),
    ("missing", _drop("labels", "backbone"), "f: metadata lacks labels, backbone (not an adaptformer adapter file?)"),
    ("format", _set(format="peft-lora"), "f: metadata format is 'peft-lora', expected 'adaptformer-adapter'"),
    ("version", _set(format_version="x"), "f: adapter format version 'x'; this version reads '1', '2', '3'"),
    ("not-json", _set(labels="[cat"), "f: metadata field 'labels' is not valid JSON ("),
    ("nan", _set(metrics='{"a": NaN}'), "f: metadata field 'metrics' is not valid JSON (NaN is not a JSON number)"),
    ("inf", _set(config='{"scale": 1e999}'), "f: metadata field 'config' is not valid JSON (1e999 is out of range)"),
    ("nested", _set(layers="[" * 17 + "]" * 17), "f: metadata field 'layers' is nested too deeply (at most 16 levels)"),
    (
        "surrogate",
        _set(labels='["\\ud800"]'),
        "f: metadata field 'labels' holds a string that is not valid Unicode (a lone surrogate)",
    ),
    ("labels-empty", _set(labels="[]"), "f: metadata 'labels' must be a non-empty JSON list of strings"),
    ("labels-not-strings", _set(labels="[1, 2, 3]"), "f: metadata 'labels' must be a non-empty JSON list of strings"),
    ("too-many-classes", _set(labels=json.dumps(["c"] * 32_769)), "f: 32,769 classes; an adapter has at most 32,768"),
    ("label-too-long", _set(labels=json.dumps(["x" * 257, "b", "c"])), "f: a label is longer than 256 characters"),
    ("description", _set(description="two\nlines"), f"f: metadata 'description' {ONE_LINE}"),
    ("input-note", _set(input_note="x" * 301), f"f: metadata 'input_note' {ONE_LINE}"),
    ("num-classes", _set(num_classes="three"), "f: metadata 'num_classes' must be a decimal number, got 'three'"),
    (
        "backbone-params",
        _set(backbone_params="\u00b2"),
        "f: metadata 'backbone_params' must be a decimal number, got '\u00b2'",
    ),
    (
        "num-classes-vs-labels",
        _set(num_classes="4"),
        "f: head has 4 outputs (metadata 'num_classes') but metadata lists 3 labels",
    ),
    (
        "method",
        _set(method="vpt"),
        "f: method 'vpt' cannot be served; adapter files hold 'adaptformer' or 'linear' tasks (VPT and full fine-tuning produce checkpoints for evaluation only)",
    ),
    ("layers-bool", _set(layers="[true, 3]"), LAYERS),
    ("layers-repeated", _set(layers="[0, 0]"), LAYERS),
    ("layers-string", _set(layers='"5"'), LAYERS),
    ("layers-over", _set(layers="[1024]"), LAYERS),
    (
        "linear-layers",
        _set(method="linear", layers="[0]"),
        "f: a 'linear' adapter has no branches, but its metadata lists layers [0]",
    ),
    ("no-config", _drop("config"), "f: an 'adaptformer' adapter needs a JSON 'config' in its metadata"),
    ("config-not-object", _set(config="[]"), "f: an 'adaptformer' adapter needs a JSON 'config' in its metadata"),
    ("no-layers", _drop("layers"), "f: an 'adaptformer' adapter needs 'layers' in its metadata"),
    (
        "config",
        _set(config='{"bottleneck": 0}'),
        "f: metadata 'config' is invalid: bottleneck must be an integer in 1..512, got 0",
    ),
    ("input-not-object", _set(input="[]"), "f: metadata 'input' must be a JSON object"),
    ("input", _set(input='{"size": 28.0}'), "f: metadata 'input' is invalid: size 28.0 is not an integer in 1..4096"),
    ("temporal", _set(temporal="true"), "f: metadata 'temporal' must be a JSON object"),
]


@pytest.mark.parametrize(("edit", "message"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_every_rule_refuses_with_its_message(edit: Callable[[Strings], object], message: str) -> None:
    """Each rule refuses a map that breaks it alone, with the message the file's owner reads."""
    _refused(edit(dict(VALID)), message)


def test_the_table_names_every_key_the_model_types() -> None:
    """A key the model types is in FIELDS; a key it does not type is kept, not checked beyond the limits."""
    written = AdapterMetadata.from_strings(CLIP, "f").to_strings()
    assert set(written) <= set(FIELDS)
    assert AdapterMetadata.from_strings({**VALID, "x-note": "[not json"}, "f").extra == {"x-note": "[not json"}
