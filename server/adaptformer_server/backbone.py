"""Loading the frozen backbone the settings name, and what adapters must match to run on it."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from adaptformer.adapter_file import BackboneSpec, Header
from adaptformer.backbone import load_backbone as _load
from adaptformer.engine import MultiTaskViT
from adaptformer.errors import AdaptformerError, UnsupportedModelError
from adaptformer.fingerprint import backbone_fingerprint
from adaptformer.preprocess import InputSpec
from adaptformer.video import VideoViT
from adaptformer_server.settings import Settings

__all__ = ["BackboneError", "BackboneInfo", "build_engine", "load_backbone"]

log = logging.getLogger("adaptformer_server.backbone")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackboneError(RuntimeError):
    """The backbone cannot be loaded as configured; the message says which setting to change."""


@dataclass(frozen=True)
class BackboneInfo:
    """The served backbone: what an adapter must match (``spec``), and where and how it runs."""

    name: str
    fingerprint: str
    params: int
    depth: int
    embed_dim: int
    num_features: int
    img_size: int | None  # None: the backbone takes any size
    supports_clips: bool
    device: torch.device
    dtype: torch.dtype
    max_frames: int | None = None  # the server's clip limit: a task with more frames can never be served

    @property
    def spec(self) -> BackboneSpec:
        """The fit rules of ``adaptformer.adapter_file`` for this backbone and the server's frame limit."""
        return BackboneSpec(
            fingerprint=self.fingerprint,
            depth=self.depth,
            embed_dim=self.embed_dim,
            num_features=self.num_features,
            img_size=self.img_size,
            supports_clips=self.supports_clips,
            max_frames=self.max_frames,
        )

    def check_header(self, header: Header, source: str) -> None:
        """Checks a checked file header against the backbone without loading tensors (start, watcher, upload)."""
        self.spec.check_header(header, source)

    def check_spec(self, spec: InputSpec, source: str) -> None:
        """Checks the adapter's input size, modality and frames against the backbone."""
        self.spec.check_input(spec, source)


def load_backbone(settings: Settings) -> tuple[nn.Module, str]:
    """The backbone the settings name (without a head) and its name, through ``adaptformer.backbone``."""
    if settings.weights is not None and not settings.weights.is_file():
        raise BackboneError(f"weights file not found: {settings.weights} (--weights / ADAPTFORMER_WEIGHTS)")
    try:
        loaded = _load(settings.backbone, settings.weights)
    except FileNotFoundError as e:
        raise BackboneError(f"{e}; or pass --weights FILE (ADAPTFORMER_WEIGHTS)") from None
    except (AdaptformerError, RuntimeError, ValueError, OSError) as e:  # RuntimeError: weights of another shape
        raise BackboneError(f"cannot load backbone {settings.backbone!r}: {e}") from None
    return loaded.model, loaded.name


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"device {setting!r} asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(setting)


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
    v = engine.vit
    fixed = not getattr(v, "dynamic_img_size", False)
    img = getattr(v.patch_embed, "img_size", None)
    img_size = int(img[0]) if fixed and img is not None and img[0] == img[1] else None
    try:
        VideoViT(v, frames=2, tubelet=1)
        clips = True
    except (UnsupportedModelError, ValueError):
        clips = False
    info = BackboneInfo(
        name=name,
        fingerprint=fingerprint,
        params=sum(p.numel() for p in v.parameters()),
        depth=len(v.blocks),
        embed_dim=v.embed_dim,
        num_features=v.num_features,
        img_size=img_size,
        supports_clips=clips,
        device=device,
        dtype=dtype,
        max_frames=settings.max_frames,
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
