"""The one preprocessing path shared by training, evaluation and serving (:class:`InputSpec` says how)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from adaptformer.input_spec import InputSpec

__all__ = ["InputSpec", "preprocess_clip", "preprocess_image", "spec_from_model"]

_RESAMPLE = {  # InputSpec's interpolation names (input_spec.INTERPOLATIONS)
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def spec_from_model(model: torch.nn.Module) -> InputSpec:
    """Reads a timm model's own data config (input size, mean, std, interpolation)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        size = int(img_size[-1]) if isinstance(img_size, Sequence) else int(img_size)
    return InputSpec(
        size=int(size),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=cfg.get("interpolation", "bicubic") if cfg.get("interpolation") in _RESAMPLE else "bicubic",
    )


def _grey_to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer or float grey pixels as 0..255, by the range their mode (or their values) imply."""
    top = float(arr.max(initial=0.0))
    if mode.startswith("I;16") or top > 255.0:
        arr = arr / 257.0  # 0..65535
    elif mode == "F" and top <= 1.0:
        arr = arr * 255.0  # 0..1
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB the way a viewer shows the image: EXIF orientation applied, 16-bit and float grey scaled down
    (PIL's own conversion clips them at 255), transparency on white, CMYK and palettes converted."""
    if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation: phones store photos sideways and say so here
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = Image.fromarray(_grey_to_8bit(np.asarray(img, dtype=np.float64), img.mode), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, as they show in a browser on a light page.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def preprocess_image(img: Image.Image | np.ndarray, spec: InputSpec) -> torch.Tensor:
    """Turns one image into a normalised float tensor of shape (3, size, size).

    The image is resized to a square (no crop: small inputs such as digits or emoji must not lose their
    borders), so that the same pixels reach the model at training and at serving time.
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img = _to_rgb(img)
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), _RESAMPLE[spec.interpolation])
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    mean, std = _normalization(tuple(spec.mean), tuple(spec.std))
    # One new tensor, contiguous [3, H, W] (what the batcher stacks and a front sends), normalised in place.
    arr = pixels.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    return arr.sub_(mean).div_(std)


@functools.lru_cache(maxsize=256)
def _normalization(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A spec's mean and std as [3, 1, 1] tensors, made once (two tensors less per image served)."""
    return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)


def preprocess_clip(frames: Sequence[Image.Image | np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Turns a clip into a tensor of shape (frames, 3, size, size).

    Raises:
        ValueError: the clip does not have exactly ``spec.frames`` frames.
    """
    if len(frames) != spec.frames:
        raise ValueError(f"this task expects clips of {spec.frames} frames, got {len(frames)}")
    return torch.stack([preprocess_image(f, spec) for f in frames])
