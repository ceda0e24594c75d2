"""Writes examples/: sample inputs for every demo task, taken from the validation splits of the built-in data.

Each file is exactly what the task was trained on: 28x28 pixels, a light object on a dark or plain background
(Fashion-MNIST, digits), an emoji on a plain colour, or an 8-frame clip as an animated GIF. The samples are the
first validation items of each class in the data's own order (no choice by the model's answer), so they show
what the demo tasks see, right or wrong. ``examples/manifest.json`` lists every file with its true label.

    python scripts/make_examples.py            # rewrites examples/ (needs the Debian data packages)
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adaptformer.data import load_data
from adaptformer.preprocess import InputSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = InputSpec(size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

# task name served by the demo -> (data source, file stem per sample)
TASKS: dict[str, str] = {"fashion": "fashion-mnist", "digits": "digits", "emoji": "emoji", "motion": "motion"}


def _pixels(x: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] tensor back to the uint8 HWC array it was made from."""
    mean = torch.tensor(SPEC.mean).view(3, 1, 1)
    std = torch.tensor(SPEC.std).view(3, 1, 1)
    return (x * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _first_per_class(y: torch.Tensor, per_class: int) -> list[int]:
    chosen: list[int] = []
    for c in range(int(y.max()) + 1):
        chosen += torch.nonzero(y == c).flatten()[:per_class].tolist()
    return sorted(chosen, key=lambda i: (int(y[i]), i))


def _save(task: str, x: torch.Tensor, label: str, index: int, out: Path) -> str:
    name = f"{task}-{_slug(label)}{'' if index == 0 else f'-{index + 1}'}"
    if x.dim() == 4:  # a clip: [T, 3, H, W]
        frames = [Image.fromarray(_pixels(f)) for f in x]
        path = out / f"{name}.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=120, loop=0, optimize=False)
    else:
        img = Image.fromarray(_pixels(x))
        if np.ptp(np.asarray(img), axis=2).max() == 0:
            img = img.convert("L")  # grey data stays a grey PNG
        path = out / f"{name}.png"
        img.save(path, optimize=True)
    return path.name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "examples")
    parser.add_argument("--per-class", type=int, default=1)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for task, source in TASKS.items():
        # limit keeps loading quick; the validation order and augmentation depend only on the seed.
        splits = load_data(source, SPEC, seed=0, limit=200, progress=False)
        seen: dict[int, int] = {}
        for i in _first_per_class(splits.val.y, args.per_class):
            c = int(splits.val.y[i])
            label = splits.labels[c]
            n = seen.get(c, 0)
            seen[c] = n + 1
            manifest.append({"file": _save(task, splits.val.x[i], label, n, args.out), "task": task, "label": label})
        print(f"{task}: {sum(seen.values())} samples from {source} (validation split, seed 0)")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
