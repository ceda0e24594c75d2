"""An adapter file's metadata (its safetensors ``__metadata__``): :class:`AdapterMetadata`, typed, and every rule
its strings must meet (no torch).

Every value of the map is a string; :data:`FIELDS` says which keys a file must have, which hold JSON and how large
each may be. :meth:`AdapterMetadata.from_strings` checks a map and types it, :meth:`AdapterMetadata.to_strings`
gives back the map a file holds. See docs/ADAPTER_FORMAT.md, "Metadata".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from adaptformer.config import AdapterConfig
from adaptformer.errors import AdapterFormatError
from adaptformer.fit import check_labels
from adaptformer.input_spec import InputSpec
from adaptformer.safetensors_header import is_json_int, strict_json

__all__ = [
    "FIELDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_BLOCK_INDEX",
    "MAX_CLASSES",
    "MAX_LABEL_CHARS",
    "MAX_METADATA_KEYS",
    "MAX_TEXT_CHARS",
    "READABLE_VERSIONS",
    "REQUIRED_KEYS",
    "TEXT_KEYS",
    "AdapterMetadata",
    "Field",
    "NewerFormatError",
]

FORMAT_NAME = "adaptformer-adapter"
FORMAT_VERSION = "2"
# Format 2 adds a clip task's temporal part (``temporal.*`` tensors, ``temporal`` metadata); format-1 files still
# load, and their clip tasks keep the format-1 clip embedding.
# Format 3 is format 2 with the temporal parts ``low`` and ``proj`` (written only by clip tasks that have one).
READABLE_VERSIONS = ("1", "2", "3")

# Limits on what metadata may hold: an adapter's metadata is served on every GET /adapters, so it is kept small.
MAX_CLASSES = 32_768  # ImageNet-21k has 21,843
MAX_LABEL_CHARS = 256
MAX_METADATA_KEYS = 64
MAX_KEY_CHARS = 64
DEFAULT_FIELD_BYTES = 16 * 1024
MAX_TEXT_CHARS = 300
MAX_BLOCK_INDEX = 1023
_DIGITS = re.compile(r"[0-9]{1,18}")

Method = Literal["adaptformer", "linear"]
METHODS: tuple[Method, ...] = ("adaptformer", "linear")


class NewerFormatError(AdapterFormatError):
    """A file of a format version newer than this adaptformer reads (a newer server sharing the store wrote it)."""


@dataclass(frozen=True)
class Field:
    """How one metadata key is written.

    Attributes:
        required: Every adapter file has it.
        kind: ``text`` (any string), ``json`` (a JSON value), ``line`` (one line of printable text of at most
            MAX_TEXT_CHARS characters) or ``digits`` (a decimal number).
        max_bytes: Most UTF-8 bytes its string may have.
    """

    required: bool = False
    kind: Literal["text", "json", "line", "digits"] = "text"
    max_bytes: int = DEFAULT_FIELD_BYTES


# In this order the checks run and the messages list keys; a key not here is kept as it is (AdapterMetadata.extra).
FIELDS: dict[str, Field] = {
    "format": Field(required=True),
    "format_version": Field(required=True),
    "task": Field(required=True),
    "method": Field(required=True),
    "labels": Field(required=True, kind="json", max_bytes=2 * 1024 * 1024),
    "input": Field(required=True, kind="json"),
    "backbone": Field(required=True),
    "backbone_fingerprint": Field(required=True),
    "config": Field(kind="json"),
    "metrics": Field(kind="json", max_bytes=64 * 1024),
    "layers": Field(kind="json"),
    "temporal": Field(kind="json"),
    # Optional one-line texts for callers (what the task answers, what input it expects).
    "description": Field(kind="line"),
    "input_note": Field(kind="line"),
    "num_classes": Field(kind="digits"),
    "backbone_params": Field(kind="digits"),
    "created": Field(),
}
REQUIRED_KEYS = tuple(key for key, f in FIELDS.items() if f.required)
TEXT_KEYS = tuple(key for key, f in FIELDS.items() if f.kind == "line")
_OTHER = Field()


# The keys AdapterMetadata types, by method: a 'linear' adapter's ``config`` configures nothing (kept as it is, in
# ``extra``).
_TYPED = {"adaptformer": frozenset(FIELDS), "linear": frozenset(FIELDS) - {"config"}}


@dataclass(frozen=True)
class AdapterMetadata:
    """What an adapter file's metadata says, checked and typed.

    Attributes:
        task: Task name.
        method: ``adaptformer`` (branches + head) or ``linear`` (head only).
        labels: Class names, one per head output.
        input: The input the task expects.
        backbone: Backbone name.
        backbone_fingerprint: Hash of the frozen backbone weights the task was trained on.
        format_version: One of READABLE_VERSIONS.
        config: The branches' configuration (``adaptformer`` only).
        layers: The adapted block indices (empty for ``linear``).
        metrics: Validation metrics and anything else the trainer kept (``{}`` when the file holds no JSON object).
        temporal: A clip task's temporal parts (``{"diff": bool, "time": bool, "mix": bool}``; format 2), checked
            against its tensors when loaded.
        backbone_params: Parameter count of the frozen backbone (0: unknown).
        description: One line saying what the task answers.
        input_note: What a caller must send beyond size and normalisation.
        created: When the file was written (ISO-8601).
        extra: Keys this version does not type, verbatim.

    ``format`` is always FORMAT_NAME and ``num_classes`` the label count: :meth:`to_strings` writes both.
    """

    task: str
    method: Method
    labels: tuple[str, ...]
    input: InputSpec
    backbone: str
    backbone_fingerprint: str
    format_version: str = FORMAT_VERSION
    config: AdapterConfig | None = None
    layers: tuple[int, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    temporal: dict[str, Any] | None = None
    backbone_params: int = 0
    description: str = ""
    input_note: str = ""
    created: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @classmethod
    def from_strings(cls, raw: object, source: str) -> AdapterMetadata:
        """The checked metadata of a safetensors header's ``__metadata__`` map.

        Args:
            raw: The map (``None`` when the file has none).
            source: Names the file in error messages.

        Raises:
            NewerFormatError: a format version newer than READABLE_VERSIONS.
            AdapterFormatError: anything else wrong (the message names the field and the rule).
        """
        strings = _checked_strings(raw, source)
        values = {
            key: strict_json(strings[key], f"metadata field {key!r}", source)
            for key, f in FIELDS.items()
            if f.kind == "json" and key in strings
        }
        labels = _labels(values["labels"], source)
        for key, f in FIELDS.items():
            if key in strings and f.kind in _TEXT_RULES:
                _TEXT_RULES[f.kind](key, strings[key], source)
        if "num_classes" in strings:
            check_labels(len(labels), int(strings["num_classes"]), source, " (metadata 'num_classes')")
        method = _method(strings["method"], source)
        _layers(values.get("layers", []), method, source)
        config = None
        if method == "adaptformer":
            if not isinstance(values.get("config"), dict):
                raise AdapterFormatError(f"{source}: an 'adaptformer' adapter needs a JSON 'config' in its metadata")
            if "layers" not in values:
                raise AdapterFormatError(f"{source}: an 'adaptformer' adapter needs 'layers' in its metadata")
            config = _config(values["config"], source)
        spec = _input(values["input"], source)
        if not isinstance(values.get("temporal", {}), dict):
            raise AdapterFormatError(f"{source}: metadata 'temporal' must be a JSON object")
        modelled = _TYPED[method]
        fields = {**strings, **{key: v for key, v in values.items() if key in modelled}}
        return cls._build(fields, config, spec)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> AdapterMetadata:
        """The metadata a :meth:`to_json` map describes, trusted: it was checked when it was made.

        Raises:
            KeyError, TypeError, ValueError: not such a map.
        """
        config = AdapterConfig.from_dict(record["config"]) if record["method"] == "adaptformer" else None
        return cls._build(record, config, InputSpec.from_dict(record["input"]))

    @classmethod
    def _build(cls, fields: Mapping[str, Any], config: AdapterConfig | None, spec: InputSpec) -> AdapterMetadata:
        """From the checked map, its JSON values decoded (the keys typed for its method), strings elsewhere."""
        method = cast(Method, fields["method"])
        metrics = fields.get("metrics")
        modelled = _TYPED[method]
        return cls(
            task=str(fields["task"]),
            method=method,
            labels=tuple(fields["labels"]),
            input=spec,
            backbone=str(fields["backbone"]),
            backbone_fingerprint=str(fields["backbone_fingerprint"]),
            format_version=str(fields["format_version"]),
            config=config,
            layers=tuple(fields.get("layers", ())) if method == "adaptformer" else (),
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
            temporal=dict(fields["temporal"]) if "temporal" in fields else None,
            backbone_params=int(fields.get("backbone_params", 0)),
            description=str(fields.get("description", "")),
            input_note=str(fields.get("input_note", "")),
            created=str(fields.get("created", "")),
            extra={key: str(v) for key, v in fields.items() if key not in modelled},
        )

    def to_json(self) -> dict[str, Any]:
        """The metadata map with its JSON fields decoded (JSON-serialisable): lossless, :meth:`from_json` reads it
        back without the checks."""
        spec = asdict(self.input)
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "task": self.task,
            "method": self.method,
            "labels": list(self.labels),
            "input": {**spec, "mean": list(spec["mean"]), "std": list(spec["std"])},
            "backbone": self.backbone,
            "backbone_fingerprint": self.backbone_fingerprint,
            "metrics": dict(self.metrics),
            "layers": list(self.layers),
            "num_classes": str(self.num_classes),
            "backbone_params": str(self.backbone_params),
        }
        if self.config is not None:
            out["config"] = self.config.to_dict()
        if self.temporal is not None:
            out["temporal"] = dict(self.temporal)
        for key in ("description", "input_note", "created"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out

    def to_strings(self) -> dict[str, str]:
        """The ``__metadata__`` map a file holds: :meth:`from_strings` reads it back to equal metadata."""
        return {
            key: json.dumps(v) if key not in self.extra and FIELDS.get(key, _OTHER).kind == "json" else v
            for key, v in self.to_json().items()
        }


def _checked_strings(raw: object, source: str) -> dict[str, str]:
    """The map, if it is one of strings within the limits, with every required key, of this format."""
    if not isinstance(raw, dict):
        raise AdapterFormatError(
            f"{source}: the safetensors file has no metadata; an adapter file carries {', '.join(REQUIRED_KEYS)}"
        )
    if len(raw) > MAX_METADATA_KEYS:
        raise AdapterFormatError(f"{source}: metadata has {len(raw):,} fields; the limit is {MAX_METADATA_KEYS}")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise AdapterFormatError(f"{source}: metadata field {key[:MAX_KEY_CHARS]!r} is not a string")
        limit = FIELDS.get(key, _OTHER).max_bytes
        if len(key) > MAX_KEY_CHARS or len(value.encode("utf-8")) > limit:
            raise AdapterFormatError(
                f"{source}: metadata field {key[:MAX_KEY_CHARS]!r} is too large (limit {limit:,} bytes)"
            )
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise AdapterFormatError(f"{source}: metadata lacks {', '.join(missing)} (not an adaptformer adapter file?)")
    if raw["format"] != FORMAT_NAME:
        raise AdapterFormatError(f"{source}: metadata format is {raw['format'][:40]!r}, expected {FORMAT_NAME!r}")
    _check_version(raw["format_version"], source)
    return raw


def _check_version(version: str, source: str) -> None:
    if version in READABLE_VERSIONS:
        return
    newest = max(int(v) for v in READABLE_VERSIONS)
    error = NewerFormatError if _DIGITS.fullmatch(version) and int(version) > newest else AdapterFormatError
    raise error(
        f"{source}: adapter format version {version[:40]!r}; this version reads {', '.join(map(repr, READABLE_VERSIONS))}"
    )


def _line(key: str, value: str, source: str) -> None:
    if len(value) > MAX_TEXT_CHARS or not value.isprintable():
        raise AdapterFormatError(
            f"{source}: metadata {key!r} must be one line of printable text of at most {MAX_TEXT_CHARS} characters"
        )


def _digits(key: str, value: str, source: str) -> None:
    if not _DIGITS.fullmatch(value):
        raise AdapterFormatError(f"{source}: metadata {key!r} must be a decimal number, got {value[:40]!r}")


_TEXT_RULES = {"line": _line, "digits": _digits}


def _labels(labels: object, source: str) -> list[str]:
    if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
        raise AdapterFormatError(f"{source}: metadata 'labels' must be a non-empty JSON list of strings")
    if len(labels) > MAX_CLASSES:
        raise AdapterFormatError(f"{source}: {len(labels):,} classes; an adapter has at most {MAX_CLASSES:,}")
    if any(len(s) > MAX_LABEL_CHARS for s in labels):
        raise AdapterFormatError(f"{source}: a label is longer than {MAX_LABEL_CHARS} characters")
    return labels


def _method(method: str, source: str) -> Method:
    if method not in METHODS:
        raise AdapterFormatError(
            f"{source}: method {method[:40]!r} cannot be served; adapter files hold 'adaptformer' or 'linear' "
            "tasks (VPT and full fine-tuning produce checkpoints for evaluation only)"
        )
    return cast(Method, method)


def _layers(layers: object, method: Method, source: str) -> None:
    if (
        not isinstance(layers, list)
        or not all(is_json_int(i) and 0 <= i <= MAX_BLOCK_INDEX for i in layers)
        or len(set(layers)) != len(layers)
    ):
        raise AdapterFormatError(
            f"{source}: metadata 'layers' must be a JSON list of distinct block indices (integers 0..{MAX_BLOCK_INDEX})"
        )
    if method == "linear" and layers:
        raise AdapterFormatError(
            f"{source}: a 'linear' adapter has no branches, but its metadata lists layers {layers}"
        )


def _config(d: dict[str, Any], source: str) -> AdapterConfig:
    """The AdapterConfig of a metadata ``config`` object."""
    try:
        return AdapterConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise AdapterFormatError(f"{source}: metadata 'config' is invalid: {e}") from None


def _input(d: object, source: str) -> InputSpec:
    """The InputSpec of a metadata ``input`` object; InputSpec's own rules refuse values that would fail or
    poison every request (the metadata JSON is not typed: a size of 28.0 or a zero std would otherwise only show
    at prediction time, as a 500 or NaN scores)."""
    if not isinstance(d, dict):
        raise AdapterFormatError(f"{source}: metadata 'input' must be a JSON object")
    try:
        return InputSpec.from_dict(d)
    except (TypeError, ValueError, OverflowError) as e:
        raise AdapterFormatError(f"{source}: metadata 'input' is invalid: {e}") from None
