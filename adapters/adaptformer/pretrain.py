"""Pretrains the embedded default backbone on Fashion-MNIST and writes ``weights/embedded.safetensors``.

    python -m adaptformer.pretrain --epochs 10 --seed 0

Reproducible for a given seed, thread count and torch build. Prints a progress bar with the time left.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from adaptformer.data.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist
from adaptformer.embedded import (
    EMBEDDED_CONFIG,
    EMBEDDED_NAME,
    EMBEDDED_SPEC,
    build_embedded,
    embedded_weights_path,
)
from adaptformer.preprocess import preprocess_image


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


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct / len(x)


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

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()

    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    if args.limit:
        train_images, train_labels = train_images[: args.limit], train_labels[: args.limit]
        test_images, test_labels = test_images[: args.limit], test_labels[: args.limit]
    print(f"preprocessing {len(train_images)} train and {len(test_images)} test images", flush=True)
    x_train, y_train = _to_tensors(train_images), torch.from_numpy(train_labels.astype(np.int64))
    x_test, y_test = _to_tensors(test_images), torch.from_numpy(test_labels.astype(np.int64))

    model = build_embedded(num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: timm VisionTransformer {EMBEDDED_CONFIG}, {n_params:,} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "token" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "token" not in n)
    ]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    history = []
    step = 0
    bar = tqdm(total=total, desc="pretrain", unit="step", dynamic_ncols=True)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        running, seen = 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            xb, yb = _augment(x_train[idx], generator), y_train[idx]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.3f}", lr=f"{lr_at(step - 1):.2e}")
        acc = evaluate(model, x_test, y_test)
        history.append({"epoch": epoch + 1, "train_loss": round(running / seen, 4), "test_top1": round(acc, 4)})
        bar.write(f"epoch {epoch + 1}/{args.epochs}: train loss {running / seen:.4f}, test top-1 {acc:.4f}")
    bar.close()

    test_top1 = evaluate(model, x_test, y_test)
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
