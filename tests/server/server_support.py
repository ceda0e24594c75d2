"""Helpers for the server tests: a tiny backbone, adapters made on it, images, and a running app."""

from __future__ import annotations

import copy
import io
import threading

import torch
from PIL import Image
from support import serving  # noqa: F401  (the server tests import it from here)
from timm.models.vision_transformer import VisionTransformer

import adaptformer as af
from adaptformer.adapter_file import task_to_bytes
from adaptformer.preprocess import InputSpec, preprocess_image, spec_from_model
from adaptformer.task import TaskAdapter

CLIP_FRAMES = 4


def tiny_vit(seed: int = 0, **kw: int) -> VisionTransformer:
    """A random 2-block ViT on 32x32 inputs (fast on a CPU)."""
    torch.manual_seed(seed)
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    cfg.update(kw)
    vit = VisionTransformer(**cfg).eval()
    vit.pretrained_cfg = {"architecture": "tiny-test-vit"}  # extract_task reads the name from it
    return vit


def make_task(
    vit: VisionTransformer,
    name: str,
    *,
    num_classes: int = 4,
    seed: int = 1,
    clip: bool = False,
    winner: int | None = None,
    linear: bool = False,
) -> TaskAdapter:
    """A task on ``vit`` with random non-zero weights; ``winner`` makes that class win on every input."""
    model = copy.deepcopy(vit)
    if linear:
        af.linear_probe(model, num_classes)
    else:
        af.add_adapters(model, af.AdapterConfig(bottleneck=8), num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if winner is not None:
            model.head.bias[winner] += 1000.0
    spec = spec_from_model(vit)
    if clip:
        spec = spec.as_clip(frames=CLIP_FRAMES, tubelet=2)
    labels = [f"{name}-{i}" for i in range(num_classes)]
    return af.extract_task(model, name, labels=labels, input_spec=spec)


def adapter_bytes(vit: VisionTransformer, name: str, **kw: object) -> bytes:
    """The adapter file of :func:`make_task`."""
    return task_to_bytes(make_task(vit, name, **kw))  # type: ignore[arg-type]


def png(seed: int, size: tuple[int, int] = (40, 40)) -> bytes:
    """A random RGB PNG."""
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def gif(frames: int, seed: int = 0) -> bytes:
    """An animated GIF with ``frames`` distinct frames."""
    images = [Image.open(io.BytesIO(png(seed + i))).convert("P") for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    return buf.getvalue()


def tensor_of(data: bytes, spec: InputSpec) -> torch.Tensor:
    return preprocess_image(Image.open(io.BytesIO(data)), spec)


def image_files(*images: bytes, field: str = "image") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{field}{i}.png", data, "image/png")) for i, data in enumerate(images)]


def upload_files(data: bytes, task: str | None = None) -> dict:
    kw: dict = {"files": {"file": ("adapter.safetensors", data, "application/octet-stream")}}
    if task is not None:
        kw["data"] = {"task": task}
    return kw


def hold_forward_pass(batcher) -> tuple[threading.Event, threading.Event]:
    """Makes the batcher's forward passes wait until ``gate`` is set (then they run as before); returns (started, gate)."""
    run, started, gate = batcher.run, threading.Event(), threading.Event()

    def held(*args):
        started.set()
        gate.wait(30)
        return run(*args)

    batcher.run = held
    return started, gate
