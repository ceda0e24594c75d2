"""AdaptFormer: frozen timm Vision Transformers with small per-task AdaptMLP branches.

>>> import timm, adaptformer as af
>>> model = af.add_adapters(timm.create_model("vit_small_patch16_224"), af.AdapterConfig(), num_classes=10)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

try:  # one version, the distribution's (pyproject.toml)
    __version__ = _version("adaptformer-serve")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Names are imported on first use: ``import adaptformer.adapter_header`` (the store, ``adaptformer inspect``)
# must not pay for, or need, torch and timm.
_EXPORTS = {
    "adaptformer.adapter_file": ("check_compatible", "load_adapter", "save_adapter"),
    "adaptformer.adapter_header": ("read_metadata",),
    "adaptformer.config": ("AdapterConfig",),
    "adaptformer.engine": ("MultiTaskViT",),
    "adaptformer.errors": (
        "AdapterFormatError",
        "AdaptformerError",
        "DataError",
        "IncompatibleAdapterError",
        "UnsupportedModelError",
    ),
    "adaptformer.fingerprint": ("backbone_fingerprint",),
    "adaptformer.layer": ("AdaptedBlock", "AdaptMLP", "block_forward"),
    "adaptformer.model": (
        "ParameterReport",
        "add_adapters",
        "freeze_backbone",
        "linear_probe",
        "remove_adapters",
        "trainable_parameters",
    ),
    "adaptformer.preprocess": ("InputSpec", "preprocess_clip", "preprocess_image", "spec_from_model"),
    "adaptformer.task": ("TaskAdapter", "TaskInfo", "extract_task"),
    "adaptformer.temporal": ("TemporalConfig",),
    "adaptformer.video": ("VideoViT", "video_vit"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        try:  # a submodule, as ``import adaptformer as af; af.engine`` found it when this file imported them all
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'adaptformer' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


if TYPE_CHECKING:
    from adaptformer.adapter_file import check_compatible, load_adapter, save_adapter
    from adaptformer.adapter_header import read_metadata
    from adaptformer.config import AdapterConfig
    from adaptformer.engine import MultiTaskViT
    from adaptformer.errors import (
        AdapterFormatError,
        AdaptformerError,
        DataError,
        IncompatibleAdapterError,
        UnsupportedModelError,
    )
    from adaptformer.fingerprint import backbone_fingerprint
    from adaptformer.layer import AdaptedBlock, AdaptMLP, block_forward
    from adaptformer.model import (
        ParameterReport,
        add_adapters,
        freeze_backbone,
        linear_probe,
        remove_adapters,
        trainable_parameters,
    )
    from adaptformer.preprocess import InputSpec, preprocess_clip, preprocess_image, spec_from_model
    from adaptformer.task import TaskAdapter, TaskInfo, extract_task
    from adaptformer.temporal import TemporalConfig
    from adaptformer.video import VideoViT, video_vit

__all__ = [
    "AdaptMLP",
    "AdaptedBlock",
    "AdapterConfig",
    "AdapterFormatError",
    "AdaptformerError",
    "DataError",
    "IncompatibleAdapterError",
    "InputSpec",
    "MultiTaskViT",
    "ParameterReport",
    "TaskAdapter",
    "TaskInfo",
    "TemporalConfig",
    "UnsupportedModelError",
    "VideoViT",
    "add_adapters",
    "backbone_fingerprint",
    "block_forward",
    "check_compatible",
    "extract_task",
    "freeze_backbone",
    "linear_probe",
    "load_adapter",
    "preprocess_clip",
    "preprocess_image",
    "read_metadata",
    "remove_adapters",
    "save_adapter",
    "spec_from_model",
    "trainable_parameters",
    "video_vit",
]
