"""Evaluating and describing adapter files and training checkpoints (``adaptformer eval`` / ``inspect``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from adaptformer.adapter_file import load_adapter
from adaptformer.adapter_header import read_header
from adaptformer.backbone import Backbone
from adaptformer.config import AdapterConfig
from adaptformer.data import Splits
from adaptformer.engine import MultiTaskViT
from adaptformer.errors import AdapterFormatError
from adaptformer.preprocess import InputSpec
from adaptformer.safetensors_header import read_safetensors_header
from adaptformer.train import TrainConfig, build_model, evaluate

__all__ = ["describe_file", "evaluate_file"]

DataLoader = Callable[[InputSpec, int | None], Splits]


def _is_checkpoint(header: dict) -> bool:
    return (header.get("__metadata__") or {}).get("format") == "adaptformer-checkpoint"


@torch.no_grad()
def evaluate_file(path: Path, backbone: Backbone, load: DataLoader) -> dict:
    """Top-1 of an adapter file (through the serving engine) or a VPT/full checkpoint on the validation split."""
    header = read_safetensors_header(path)
    if _is_checkpoint(header):
        meta = header["__metadata__"]
        recipe = json.loads(meta["recipe"])
        if recipe.get("adapter"):
            recipe["adapter"] = AdapterConfig.from_dict(recipe["adapter"])
        else:
            recipe.pop("adapter", None)
        cfg = TrainConfig(**{**recipe, "device": "cpu"})
        spec = InputSpec.from_dict(json.loads(meta["input"]))
        splits = load(spec, spec.frames if spec.modality == "clip" else None)
        model = build_model(backbone, cfg, len(json.loads(meta["labels"])), frames=splits.frames)
        from safetensors.torch import load_file

        state = load_file(str(path))
        params = dict(model.named_parameters())
        misfits = sorted(k for k, v in state.items() if k not in params or params[k].shape != v.shape)
        if misfits:
            raise AdapterFormatError(f"{path}: checkpoint tensors {misfits[:3]} do not fit the rebuilt model")
        for k, v in state.items():
            params[k].data.copy_(v)
        metrics = evaluate(model, splits.val)
        return {"file": str(path), "method": cfg.method, "task": meta["task"], **metrics}
    task = load_adapter(path)
    spec = task.info.input
    splits = load(spec, spec.frames if spec.modality == "clip" else None)
    if splits.labels != task.info.labels:
        raise ValueError(
            f"the data's classes {splits.labels[:5]}... differ from the adapter's {task.info.labels[:5]}..."
        )
    engine = MultiTaskViT(backbone.model)
    engine.add_task(task.name, task)
    correct = 0
    for i in range(0, len(splits.val.y), 256):
        logits = engine(splits.val.x[i : i + 256], task.name)
        correct += int((torch.stack(logits).argmax(-1) == splits.val.y[i : i + 256]).sum())
    n = len(splits.val.y)
    return {"file": str(path), "method": task.info.method, "task": task.name, "top1": correct / max(n, 1), "samples": n}


def describe_file(path: Path) -> dict:
    """Metadata, parameter count, size and share of the backbone of an adapter file or checkpoint."""
    path = Path(path)
    header = read_safetensors_header(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    params = sum(math.prod(int(d) for d in v.get("shape", [])) for v in tensors.values())
    if _is_checkpoint(header):
        meta = dict(header["__metadata__"])
        meta["servable"] = "no: a training checkpoint for evaluation (the server serves adaptformer and linear)"
    else:
        meta = {**read_header(path).metadata.to_json(), "servable": "yes"}
    info = {"file": str(path), "size_bytes": path.stat().st_size, "tensors": len(tensors), "parameters": params}
    backbone_params = int(meta.get("backbone_params") or 0)
    if backbone_params:
        info["percent_of_backbone"] = round(100.0 * params / backbone_params, 3)
    info.update(meta)
    return info
