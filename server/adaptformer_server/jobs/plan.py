"""What a training job will do, checked before it is accepted: its knobs, and the adapter it will write.

A job must never train for minutes and then fail at registration, so the adapter it would write (metadata and
tensor shapes, no tensor data) goes through the checks of ``POST /adapters`` at submission: the library's header
checks (:func:`~adaptformer.adapter_header.parse_header`: labels, description, config, layers, input) and the
backbone's fit rules (:meth:`~adaptformer.fit.BackboneSpec.check_header`). The description a job makes
itself when none is given is made within the same limits.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from adaptformer.adapter_header import parse_header
from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError
from adaptformer.fit import BackboneSpec, branch_shapes
from adaptformer.input_spec import InputSpec
from adaptformer.metadata import FORMAT_NAME, FORMAT_VERSION, MAX_TEXT_CHARS
from adaptformer.train import TrainConfig
from adaptformer_server.errors import InvalidInput
from adaptformer_server.jobs.knobs import TrainKnobs
from adaptformer_server.limits import Limits
from adaptformer_server.settings import Settings

__all__ = ["adapter_description", "adapter_input", "check_adapter", "check_knobs"]

_SOURCE = "this job's adapter"
_SHOWN_LABELS = 8


def check_knobs(knobs: TrainKnobs, settings: Settings, depth: int) -> TrainConfig:
    """The job's recipe, checked before its examples are read: the server's limits and the library's rules.

    Args:
        knobs: The request's knobs.
        settings: The server's settings (``train_max_epochs``, ``max_frames``, the device).
        depth: The backbone's block count (``layers`` must name blocks it has).

    Raises:
        InvalidInput: a knob over a limit, or one the library refuses (``layers=first:0``, ``layers=999``).
    """
    if knobs.epochs > settings.train_max_epochs:
        raise InvalidInput(f"epochs={knobs.epochs} is more than this server allows ({settings.train_max_epochs})")
    if knobs.frames is not None:
        Limits.of(settings).check_requested_frames(knobs.frames)
    try:
        config = knobs.train_config(settings.device)
        if config.method == "adaptformer":
            config.adapter.resolve_layers(depth)
    except ValueError as e:
        raise InvalidInput(f"{e} (layers: all, first:k or last:k with 1 <= k <= {depth}, or block indices)") from None
    return config


def adapter_description(labels: list[str], job_id: str, examples: int) -> str:
    """The description of a job's adapter when the request gives none: its classes (the first few, shortened to
    fit) and where it came from, one line of at most the metadata's ``MAX_TEXT_CHARS``."""
    tail = f" (trained by the server, job {job_id}, from {examples} examples)"
    shown = ", ".join(labels[:_SHOWN_LABELS]) + (", ..." if len(labels) > _SHOWN_LABELS else "")
    room = MAX_TEXT_CHARS - len(tail)
    if len(shown) > room:
        shown = shown[: room - 3].rstrip(", ") + "..."
    return shown + tail


def adapter_input(backbone_input: InputSpec, modality: str, frames: int, tubelet: int) -> InputSpec:
    """The input a job's adapter takes: the backbone's, as clips of ``frames`` for clip examples.

    Raises:
        InvalidInput: clips the adapter cannot take (their frames are not a multiple of the tubelet).
    """
    if modality != "clip":
        return backbone_input
    try:
        return backbone_input.as_clip(frames, tubelet)
    except ValueError as e:
        raise InvalidInput(
            f"clips of {frames} frames: {e}; pass frames=N (a multiple of {tubelet}) to resample every clip"
        ) from None


def check_adapter(
    task: str,
    config: TrainConfig,
    labels: list[str],
    description: str,
    spec: InputSpec,
    backbone: BackboneSpec,
    backbone_name: str,
) -> None:
    """Checks the adapter a job would write with the checks of an upload (see the module docstring).

    Args:
        task: The task it trains.
        config: Its recipe (:func:`check_knobs`).
        labels: Its classes, as the worker will read them.
        description: The description it will carry.
        spec: The input it will take (:func:`adapter_input`).
        backbone: The served backbone's rules.
        backbone_name: The served backbone's name.

    Raises:
        InvalidInput: an upload would refuse that adapter (the message says why).
    """
    layers = config.adapter.resolve_layers(backbone.depth) if config.method == "adaptformer" else []
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "task": task,
        "method": config.method,
        "labels": json.dumps(labels),
        "input": spec.to_json(),
        "backbone": backbone_name,
        "backbone_fingerprint": backbone.fingerprint,
        "layers": json.dumps(layers),
        "num_classes": str(len(labels)),
        "description": description,
    }
    shapes: dict[str, tuple[int, ...]] = {
        "head.weight": (len(labels), backbone.num_features),
        "head.bias": (len(labels),),
    }
    if config.method == "adaptformer":
        meta["config"] = config.adapter.to_json()
        branch = branch_shapes(backbone.embed_dim, config.adapter)
        shapes.update({f"adapters.{i}.{name}": shape for i in layers for name, shape in branch.items()})
    try:
        backbone.check_header(parse_header(_header_bytes(meta, shapes), _SOURCE), _SOURCE)
    except (AdapterFormatError, IncompatibleAdapterError) as e:
        raise InvalidInput(f"{e} (an upload of it would be refused, so the job is not queued)") from None


def _header_bytes(meta: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The start of a safetensors file: its header, float32 tensors of ``shapes`` laid out one after another."""
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name, shape in shapes.items():
        end = offset + 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text
