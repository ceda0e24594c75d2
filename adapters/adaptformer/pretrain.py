"""Pretrains the embedded default backbone on Fashion-MNIST and writes ``weights/embedded.safetensors``.

    python -m adaptformer.pretrain --epochs 10 --seed 0

Reproducible for a given seed, thread count and torch build. Prints a progress bar with the time left.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from adaptformer.data import LabeledData, Splits
from adaptformer.data.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist
from adaptformer.embedded import (
    EMBEDDED_CONFIG,
    EMBEDDED_NAME,
    EMBEDDED_SPEC,
    build_embedded,
    embedded_weights_path,
)
from adaptformer.preprocess import preprocess_image
from adaptformer.train import TrainConfig, fit


def _to_tensors(images: np.ndarray) -> torch.Tensor:
    """The served preprocessing applied to every image once (uint8 28x28 grey -> normalised 3x28x28)."""
    return torch.stack([preprocess_image(Image.fromarray(im, mode="L"), EMBEDDED_SPEC) for im in images])


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (pad with the background value)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    pad = 2
    background = float(-EMBEDDED_SPEC.mean[0] / EMBEDDED_SPEC.std[0])
    padded = F.pad(x, (pad, pad, pad, pad), value=background)
    dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only this many training images (smoke runs)")
    p.add_argument("--out", type=Path, default=embedded_weights_path())
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.time()

    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    if args.limit:
        train_images, train_labels = train_images[: args.limit], train_labels[: args.limit]
        test_images, test_labels = test_images[: args.limit], test_labels[: args.limit]
    print(f"preprocessing {len(train_images)} train and {len(test_images)} test images", flush=True)
    splits = Splits(
        train=LabeledData(_to_tensors(train_images), torch.from_numpy(train_labels.astype(np.int64))),
        val=LabeledData(_to_tensors(test_images), torch.from_numpy(test_labels.astype(np.int64))),
        labels=list(FASHION_MNIST_LABELS),
        modality="image",
        frames=1,
        source="fashion-mnist",
    )

    # The training loop of every method (train.fit): the whole model trains ("full"), on the CPU, validated on
    # the test set after every epoch, with this script's augmentation and loss.
    cfg = TrainConfig(method="full", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, seed=args.seed, device="cpu",
                      amp=False)  # fmt: skip
    torch.manual_seed(args.seed)
    model = build_embedded(num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: timm VisionTransformer {EMBEDDED_CONFIG}, {n_params:,} parameters", flush=True)

    def report(record: dict) -> None:
        tqdm.write(f"epoch {record['epoch']}/{args.epochs}: train loss {record['train_loss']:.4f}, "
                   f"test top-1 {record['val_top1']:.4f}")  # fmt: skip

    result = fit(model, splits, cfg, on_epoch=report, augment=_augment,
                 loss_fn=functools.partial(F.cross_entropy, label_smoothing=args.label_smoothing))  # fmt: skip
    history = [
        {"epoch": r["epoch"], "train_loss": round(r["train_loss"], 4), "test_top1": round(r["val_top1"], 4)}
        for r in result.history
    ]
    test_top1 = result.metrics["val_top1"]
    wall = time.time() - started
    metadata = {
        "format": "adaptformer-backbone",
        "name": EMBEDDED_NAME,
        "architecture": json.dumps(EMBEDDED_CONFIG),
        "input": EMBEDDED_SPEC.to_json(),
        "labels": json.dumps(FASHION_MNIST_LABELS),
        "dataset": "fashion-mnist (Debian dataset-fashion-mnist)",
        "test_top1": f"{test_top1:.4f}",
        "recipe": json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}),
        "history": json.dumps(history),
        "wall_seconds": f"{wall:.0f}",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", torch {torch.__version__}",
        "command": "python -m adaptformer.pretrain " + " ".join(argv or []),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=metadata)
    tmp.replace(args.out)
    print(
        f"test top-1 {test_top1:.4f}; wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {wall / 60:.1f} min"
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
