"""AdaptFormer: frozen timm Vision Transformers with small per-task AdaptMLP branches.

>>> import timm, adaptformer as af
>>> model = af.add_adapters(timm.create_model("vit_small_patch16_224"), af.AdapterConfig(), num_classes=10)
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from adaptformer.adapter_file import check_compatible, load_adapter, read_metadata, save_adapter
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

try:  # one version, the distribution's (pyproject.toml)
    __version__ = _version("adaptformer-serve")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

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
