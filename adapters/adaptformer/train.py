"""Training and evaluation of a task on a frozen backbone: AdaptFormer, linear probing, VPT, full fine-tuning."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch import nn
from tqdm import tqdm

from adaptformer.adapter_file import save_adapter
from adaptformer.atomic import atomic_write
from adaptformer.backbone import Backbone, resolve_device
from adaptformer.config import AdapterConfig
from adaptformer.data import LabeledData, Splits
from adaptformer.data.augment import clip_augment
from adaptformer.fingerprint import backbone_fingerprint
from adaptformer.model import add_adapters, base_vit, linear_probe, trainable_parameters
from adaptformer.temporal import TemporalConfig
from adaptformer.video import video_vit
from adaptformer.videomae import is_video_pretrained
from adaptformer.vpt import add_prompts

__all__ = [
    "METHODS",
    "SMALL_DATA",
    "SMALL_DATA_PER_CLASS",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "fit",
    "is_small",
    "save_result",
    "small_data_recipe",
]

Method = Literal["adaptformer", "linear", "vpt", "full"]
Optimizer = Literal["adamw", "sgd"]
METHODS: tuple[str, ...] = get_args(Method)
# Measured on the motion and zoom-rotate clips (docs/benchmarks/demo_methods.md): the frame-difference kernel is
# what lets a clip task see motion; a learned time embedding adds nothing to it, slot embeddings alone see none.
DEFAULT_TEMPORAL = "low"  # the rank-16 difference kernel: diff's top-1 within noise at 0.14% of ViT-S/16
SERVABLE = ("adaptformer", "linear")
# The recipe of a small training set (at most SMALL_DATA_PER_CLASS examples per class on average), where it differs
# from TrainConfig's defaults: smaller branches with a larger scale, and the smaller batches and more epochs that
# give such a set enough optimizer steps (its 160 clips make 30 steps of batch 64 in 10 epochs, 200 of batch 16 in
# 20). Measured: 160 zoom-rotate clips 0.644 val top-1 against 0.363 for TrainConfig's defaults
# (docs/benchmarks/clip_recipe.md); Fashion-MNIST, 20 images per class, 0.90 against 0.80 (docs/API.md). Keys are
# TrainConfig fields, "adapter.x" a field of its AdapterConfig.
SMALL_DATA: dict[str, Any] = {"epochs": 20, "batch_size": 16, "adapter.bottleneck": 16, "adapter.scale": 0.5}
SMALL_DATA_PER_CLASS = 200


@dataclass
class TrainConfig:
    """The recipe; the same for every method unless a flag changes it.

    The ``Args:`` below are also the help of ``adaptformer train``'s flags, which are generated from the fields.

    Args:
        method: What trains: ``adaptformer`` branches, a ``linear`` probe (the head only), ``vpt`` prompts or
            ``full`` fine-tuning (the last two give checkpoints for evaluation, not adapter files).
        adapter: Branch configuration (``adaptformer`` only).
        prompt_tokens: VPT prompt tokens per block set.
        vpt_deep: VPT prompts in every block instead of the input only.
        epochs: Passes over the training split.
        batch_size: Samples per step.
        lr: Peak learning rate (after linear warmup, then cosine decay to zero).
        weight_decay: Weight decay (not applied to biases, norms, scales and prompts).
        warmup_epochs: Epochs of linear warmup.
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9).
        seed: Seeds initialisation, shuffling and dropout; a run is reproducible for a seed.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        amp: Mixed precision (bfloat16 autocast) on GPU.
        tubelet: Frames per space-time token for clip tasks.
        temporal: A clip task's temporal parts: ``auto`` (``low``; ``none`` for a linear probe, which trains its
            head only, and on a video-pretrained backbone such as VideoMAE), ``none``, or a ``+``-list of ``diff``,
            ``time``, ``mix``, ``low``, ``proj`` (see :mod:`adaptformer.temporal`; ``low`` is within 0.3% of the backbone,
            ``diff`` 2.7% of ViT-S/16).
            Image tasks have none.
        eval_every: Epochs between validation passes (the last epoch is always validated).
        clip_augment: Label-true augmentation of training clips (temporal jitter of the frame sampling, random
            crops; no flips or reversal, see :mod:`adaptformer.data.augment`).
    """

    method: Method = "adaptformer"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    prompt_tokens: int = 4
    vpt_deep: bool = False
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    optimizer: Optimizer = "adamw"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    tubelet: int = 2
    eval_every: int = field(default=1, metadata={"metavar": "N"})
    temporal: str = "auto"
    clip_augment: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.optimizer not in get_args(Optimizer):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch size must be >= 1 and lr > 0")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every!r}")
        self.temporal_config()  # fails early on a malformed list

    def temporal_config(self, backbone: nn.Module | None = None) -> TemporalConfig:
        """The temporal parts a clip task on ``backbone`` gets with this recipe: for ``auto``, none for a linear
        probe and for a video-pretrained backbone (VideoMAE: its own tubelet kernel sees motion, and the paper's
        video results train branches and head alone on it), else :data:`DEFAULT_TEMPORAL` (``low``)."""
        if self.temporal == "auto":
            native = backbone is not None and is_video_pretrained(backbone)
            return TemporalConfig.parse("none" if self.method == "linear" or native else DEFAULT_TEMPORAL)
        return TemporalConfig.parse(self.temporal)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adapter"] = self.adapter.to_dict() if self.method == "adaptformer" else None
        return d


def is_small(train_samples: int, classes: int) -> bool:
    """Whether a training set of ``train_samples`` over ``classes`` classes gets the :data:`SMALL_DATA` recipe."""
    return train_samples <= SMALL_DATA_PER_CLASS * max(classes, 1)


def small_data_recipe(cfg: TrainConfig, keep: Collection[str] = ()) -> TrainConfig:
    """``cfg`` with the :data:`SMALL_DATA` values, except the fields in ``keep`` (a caller's explicit choices, named
    as :data:`SMALL_DATA`'s keys)."""
    top = {k: v for k, v in SMALL_DATA.items() if "." not in k and k not in keep}
    nested = {k.split(".", 1)[1]: v for k, v in SMALL_DATA.items() if k.startswith("adapter.") and k not in keep}
    return replace(cfg, adapter=replace(cfg.adapter, **nested), **top)


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    model: nn.Module
    history: list[dict]
    metrics: dict
    config: TrainConfig
    seconds: float


def build_model(backbone: Backbone, cfg: TrainConfig, num_classes: int, frames: int = 1) -> nn.Module:
    """The backbone wrapped for the method (and for clips when ``frames > 1``), seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model: nn.Module = backbone.model
    if frames > 1:
        model = video_vit(model, frames=frames, tubelet=cfg.tubelet, temporal=cfg.temporal_config(model))
    if cfg.method == "adaptformer":
        return add_adapters(model, cfg.adapter, num_classes=num_classes)
    if cfg.method == "linear":
        return linear_probe(model, num_classes)
    if cfg.method == "vpt":
        return add_prompts(model, cfg.prompt_tokens, num_classes, deep=cfg.vpt_deep)
    vit = base_vit(model)
    vit.reset_classifier(num_classes)
    model.requires_grad_(True)
    return model


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or name.endswith(".scale") or "prompts" in name or "pos_embed" in name or "token" in name
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, data: LabeledData, batch_size: int = 256, device: str | torch.device = "cpu") -> dict:
    """Top-1 accuracy and mean cross-entropy on ``data``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(data.y), batch_size):
        xb, yb = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size].to(device)
        with _autocast(device, True):
            logits = model(xb).float()
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(-1) == yb).sum())
    model.train(was_training)
    n = max(len(data.y), 1)
    return {"top1": correct / n, "loss": loss_sum / n, "samples": len(data.y)}


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> TrainResult:
    """Trains the parameters of ``model`` that require grad; evaluates on the validation split every epoch.

    Each epoch's shuffling and dropout are seeded from ``(cfg.seed, epoch)``, and the optimizer state is in the
    checkpoint, so a run resumed from a checkpoint ends bit-for-bit where an uninterrupted run does.

    Args:
        model: From :func:`build_model`.
        splits: Training and validation data.
        cfg: The recipe.
        checkpoint: Where to save the training state after every epoch (optional).
        resume: Continue from ``checkpoint`` when it exists.
        progress: Show a progress bar with loss, accuracy and time left.
        on_epoch: Called with each epoch's record.
        augment: Applied to each training batch (on the host) with the epoch's seeded generator.
        loss_fn: The training loss of logits and class ids (validation always reports plain cross-entropy).
    """
    device = resolve_device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    n = len(splits.train.y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    history: list[dict] = []
    start_epoch = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        trainable = {k: v for k, v in model.named_parameters() if v.requires_grad}
        for k, v in state["params"].items():
            trainable[k].data.copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], json.loads(state["history"])
    started = time.time()
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=f"train {cfg.method}", unit="step",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    step = start_epoch * steps_per_epoch
    val: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb = splits.train.x[idx] if augment is None else augment(splits.train.x[idx], generator)
            if augment is None and cfg.clip_augment and xb.ndim == 5:
                xb = clip_augment(xb, generator)
            xb, yb = xb.to(device), splits.train.y[idx].to(device)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step)
            with _autocast(device, cfg.amp):
                logits = model(xb).float()
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == yb).sum())
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(
                epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}"
            )
        record = {"epoch": epoch + 1, "train_loss": round(loss_sum / seen, 5), "train_top1": round(correct / seen, 5)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            val = evaluate(model, splits.val, device=device)
            record.update(val_loss=round(val["loss"], 5), val_top1=round(val["top1"], 5))
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{record['train_loss']:.3f}",
                            val=f"{val['top1']:.3f}")  # fmt: skip
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if checkpoint is not None:
            trainable_state = {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}
            buf = {"params": trainable_state, "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                   "history": json.dumps(history)}  # fmt: skip
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(buf, tmp)
            tmp.replace(checkpoint)
    bar.close()
    # The last epoch's validation pass is the final one; a resumed run with nothing left to train evaluates now.
    final = val if start_epoch < cfg.epochs else evaluate(model, splits.val, device=device)
    report = trainable_parameters(model) if cfg.method != "full" else None
    # A clip task's temporal part sits outside the ViT, where the report counts it as backbone; it is the task's.
    temporal = sum(p.numel() for n, p in model.named_parameters() if ".temporal." in f".{n}")
    metrics = {
        "val_top1": round(final["top1"], 5),
        "val_loss": round(final["loss"], 5),
        "val_samples": final["samples"],
        "train_samples": n,
        "epochs": cfg.epochs,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "percent_of_backbone": round(100.0 * report.trainable / max(report.backbone - temporal, 1), 3)
        if report
        else 100.0,
    }
    return TrainResult(model, history, metrics, cfg, time.time() - started)


def save_result(
    result: TrainResult,
    out: Path,
    task: str,
    splits: Splits,
    backbone: Backbone,
    extra: dict | None = None,
    description: str | None = None,
    input_note: str | None = None,
) -> dict:
    """Writes the adapter file (servable methods) or an evaluation checkpoint, and ``<out>.metrics.json``.

    ``description`` and ``input_note`` (what the task answers, what its callers must send) default to the data
    source's own (set for the built-in sources, empty for folders).
    """
    cfg = result.config
    spec = backbone.spec.as_clip(splits.frames, cfg.tubelet) if splits.modality == "clip" else backbone.spec
    metrics = {**result.metrics, "data": splits.source, **(extra or {})}
    if cfg.method in SERVABLE:
        save_adapter(result.model, out, task=task, labels=splits.labels, input_spec=spec, metrics=metrics,
                     backbone_name=backbone.name,
                     description=splits.description if description is None else description,
                     input_note=splits.input_note if input_note is None else input_note)  # fmt: skip
    else:
        trainable = {k: v.detach().cpu().contiguous() for k, v in result.model.named_parameters() if v.requires_grad}
        meta = {
            "format": "adaptformer-checkpoint",
            "method": cfg.method,
            "task": task,
            "labels": json.dumps(splits.labels),
            "input": spec.to_json(),
            "backbone": backbone.name,
            "backbone_fingerprint": backbone_fingerprint(result.model) if cfg.method != "full" else "",
            "recipe": json.dumps(cfg.to_dict()),
            "metrics": json.dumps(metrics),
        }
        atomic_write(out, st_save(trainable, metadata=meta))
    summary = {
        "task": task,
        "method": cfg.method,
        "file": str(out),
        "servable": cfg.method in SERVABLE,
        "metrics": metrics,
        "history": result.history,
        "recipe": cfg.to_dict(),
        "labels": splits.labels,
        "backbone": backbone.name,
        "seconds": round(result.seconds, 1),
    }
    atomic_write(metrics_path(out), (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def metrics_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".metrics.json")
