"""Loading the frozen backbone the settings name, and what adapters must match to run on it."""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from adaptformer.backbone import load_backbone as _load
from adaptformer.backbone import resolve_device as _resolve_device
from adaptformer.engine import MultiTaskViT
from adaptformer.errors import AdaptformerError, UnsupportedModelError
from adaptformer.fingerprint import backbone_fingerprint
from adaptformer.fit import BackboneSpec
from adaptformer_server.settings import Settings

__all__ = ["BackboneError", "BackboneInfo", "build_engine", "load_backbone", "resolve_device"]

log = logging.getLogger("adaptformer_server.backbone")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackboneError(RuntimeError):
    """The backbone cannot be loaded as configured; the message says which setting to change."""


@dataclass(frozen=True, kw_only=True)
class BackboneInfo(BackboneSpec):
    """The served backbone: a :class:`BackboneSpec` (every rule an adapter must fit, the server's frame limit
    included), and its name, size, device and dtype."""

    name: str
    params: int
    device: torch.device
    dtype: torch.dtype


def load_backbone(settings: Settings) -> tuple[nn.Module, str]:
    """The backbone the settings name (without a head) and its name, through ``adaptformer.backbone``."""
    # A file, or (VideoMAE) a Hugging Face model folder: the library says which a name takes.
    if settings.weights is not None and not settings.weights.exists():
        raise BackboneError(f"weights file not found: {settings.weights} (--weights / ADAPTFORMER_WEIGHTS)")
    try:
        loaded = _load(settings.backbone, settings.weights)
    except FileNotFoundError as e:
        raise BackboneError(f"{e}; or pass --weights FILE (ADAPTFORMER_WEIGHTS)") from None
    except (AdaptformerError, RuntimeError, ValueError, OSError) as e:  # RuntimeError: weights of another shape
        raise BackboneError(f"cannot load backbone {settings.backbone!r}: {e}") from None
    return loaded.model, loaded.name


def resolve_device(setting: str) -> torch.device:
    """The library's :func:`adaptformer.backbone.resolve_device`, its refusal as a BackboneError."""
    try:
        return _resolve_device(setting)
    except ValueError as e:
        raise BackboneError(str(e)) from None


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def build_engine(settings: Settings, backbone: nn.Module | None = None) -> tuple[MultiTaskViT, BackboneInfo]:
    """Loads (or copies) the backbone, fingerprints it in float32 and places it on the device.

    Args:
        settings: The server settings (backbone, weights, device, dtype).
        backbone: A prebuilt timm ViT to serve instead of the one the settings name (tests, embedding apps).
    """
    if backbone is not None:
        vit = copy.deepcopy(backbone).eval()
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") or type(vit).__name__
    else:
        vit, name = load_backbone(settings)
    vit = vit.to("cpu", torch.float32)
    try:
        fingerprint = backbone_fingerprint(vit)  # before any dtype change: adapters record the float32 hash
        engine = MultiTaskViT(vit, fingerprint=fingerprint)
    except UnsupportedModelError as e:
        raise BackboneError(str(e)) from None
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    engine.to(device=device, dtype=dtype)
    rules = {f.name: getattr(engine.spec, f.name) for f in dataclasses.fields(BackboneSpec)}
    info = BackboneInfo(
        **{**rules, "max_frames": settings.max_frames},
        name=name,
        params=sum(p.numel() for p in engine.vit.parameters()),
        device=device,
        dtype=dtype,
    )
    log.info(
        "backbone %s: %s parameters, fingerprint %s, on %s as %s",
        name,
        f"{info.params:,}",
        fingerprint,
        device,
        str(dtype).removeprefix("torch."),
    )
    return engine, info
