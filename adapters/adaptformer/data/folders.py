"""Image and clip folders in the ImageFolder layout.

Images::

    root/<class>/<image files>

Clips, either animated GIF/WebP files or folders of frames (read in natural name order: 2 before 10)::

    root/<class>/<clip>.gif
    root/<class>/<clip>/<frame images>

If ``root/train`` and ``root/val`` (or ``valid``, ``validation``) exist, they are the two splits; otherwise the
samples of ``root`` (or of ``root/train`` alone: other folders beside it are not read) are split per class with
the seed and ``val_fraction``. An image beside the class folders, or a folder inside a clip's folder, is refused
(it would be left out).

:func:`read_layout` is the one reader of these layouts: it finds the splits, classes and samples from names and
headers alone (the server checks a training job's examples with it); :func:`load_folder_splits` decodes what it
found.

Clips: when ``frames`` is given, every clip is resampled to that many frames by taking evenly spaced frames
(``round(linspace(0, n - 1, frames))``: frames are dropped, or repeated when a clip is shorter). When
``frames`` is not given, a clip spec's ``frames`` applies; with an image spec, every clip must have the same
number of frames, and that is the clip length.
Frames of different sizes are fine: each is resized to the spec's square.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from adaptformer.data._util import (
    check_memory,
    clip_spec,
    fill,
    image_source_frames,
    labels_tensor,
    split_stratified,
    take,
)
from adaptformer.data.decode import open_clip, open_image
from adaptformer.data.types import LabeledData, Splits
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec, preprocess_clip, preprocess_image

__all__ = ["IMAGE_EXTENSIONS", "FolderLayout", "Sample", "load_folder_splits", "read_layout"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_ANIMATABLE = frozenset({".gif", ".webp"})
_VAL_NAMES = ("val", "valid", "validation")


@dataclass(frozen=True)
class Sample:
    """One example: an image, an animated image (a clip) or a folder of frames (a clip).

    Attributes:
        kind: ``image``, ``clip_file`` or ``clip_dir``.
        path: The file, or the clip's folder.
        label: The index of its class in the layout's ``labels``.
        frames: Its frames (1 for an image).
        frame_files: A clip folder's frames, in natural name order.
    """

    kind: str
    path: Path
    label: int
    frames: int
    frame_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class FolderLayout:
    """What a folder of examples holds (see the module docstring), read without decoding pixels.

    Attributes:
        root: The folder read.
        labels: The class names: the training split's folder names, sorted.
        train: The samples of the training split (``root/train`` or ``root``).
        val: The samples of the validation folder; ``None`` when the training samples are split per class.
        modality: ``image`` or ``clip`` (never both).
        train_root: The folder of the training split.
        val_root: The validation folder, if any.
    """

    root: Path
    labels: list[str]
    train: list[Sample]
    val: list[Sample] | None
    modality: str
    train_root: Path
    val_root: Path | None

    @property
    def samples(self) -> list[Sample]:
        return self.train + (self.val or [])


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=_natural_key)


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _frame_count(p: Path) -> int:
    """Frames of an animated GIF/WebP (1 for a still one), from the header; names the file when unreadable."""
    try:
        with Image.open(p) as img:
            return int(getattr(img, "n_frames", 1)) if getattr(img, "is_animated", False) else 1
    except Exception as e:
        raise DataError(f"{p}: not a readable image ({type(e).__name__}: {e})") from None


def _scan(root: Path, labels: list[str] | None, frames_of: Callable[[Path], int]) -> tuple[list[str], list[Sample]]:
    """Finds the classes (sorted folder names) and their samples; ``labels`` fixes the class ids (val split)."""
    entries = _visible(root)
    class_dirs = [p for p in entries if p.is_dir()]
    loose = next((p for p in entries if _is_image_file(p)), None)
    if not class_dirs:
        if loose is not None:
            raise DataError(
                f"{root} holds images but no class folders; expected {root}/<class>/<image files>, one folder per class"
            )
        raise DataError(f"{root} is empty: expected one folder per class, {root}/<class>/<image files or clips>")
    if loose is not None:
        raise DataError(f"{loose} lies outside a class folder; put each image in <class>/<image>, one folder per class")
    names = sorted(p.name for p in class_dirs)
    if labels is not None:
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise DataError(
                f"{root} has classes that the training split lacks: {', '.join(unknown)} "
                f"(training classes: {', '.join(labels)})"
            )
    else:
        labels = names
    samples: list[Sample] = []
    for d in sorted(class_dirs, key=lambda p: p.name):
        label = labels.index(d.name)
        found = 0
        for p in _visible(d):
            if _is_image_file(p):
                n = frames_of(p) if p.suffix.lower() in _ANIMATABLE else 1
                samples.append(Sample("clip_file" if n > 1 else "image", p, label, n))
                found += 1
            elif p.is_dir():
                inside = _visible(p)
                nested = next((f for f in inside if f.is_dir()), None)
                if nested is not None:
                    raise DataError(f"clip folder {p} holds a folder ({nested.name}); a clip folder holds frame images")
                frame_files = tuple(f for f in inside if _is_image_file(f))
                if not frame_files:
                    raise DataError(f"clip folder {p} holds no frame images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
                samples.append(Sample("clip_dir", p, label, len(frame_files), frame_files))
                found += 1
        if not found:
            raise DataError(
                f"class folder {d} holds no images or clips (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    return labels, samples


def _modality(root: Path, samples: list[Sample]) -> str:
    image = next((s for s in samples if s.kind == "image"), None)
    clip = next((s for s in samples if s.kind != "image"), None)
    if image and clip:
        what = "an animated image" if clip.kind == "clip_file" else "a folder of frames"
        raise DataError(
            f"{root} mixes images and clips ({image.path} is a still image, {clip.path} is {what}); "
            "put images and clips in separate data sets (one kind each, never mixed)"
        )
    return "image" if image else "clip"


def read_layout(root: Path, frames_of: Callable[[Path], int] = _frame_count) -> FolderLayout:
    """Reads a folder's layout: its splits, classes and samples (see the module docstring); no pixels decoded.

    Args:
        root: The folder.
        frames_of: Counts the frames of an animated GIF/WebP file from its header (the server passes its own,
            which applies its format and size limits).

    Raises:
        DataError: not a folder, no class folders, one class, an empty class or clip folder, an image outside a
            class folder, a folder inside a clip folder, val/ classes the training split lacks, images and clips
            mixed.
    """
    if not root.is_dir():
        raise DataError(f"{root} is a file; give the folder that holds one sub-folder per class")
    train_root = root / "train" if (root / "train").is_dir() else root
    val_root = next((root / n for n in _VAL_NAMES if (root / n).is_dir()), None) if train_root != root else None
    labels, train = _scan(train_root, None, frames_of)
    if len(labels) < 2:
        raise DataError(f"{train_root} has only one class ({labels[0]}); a classifier needs at least two class folders")
    val = _scan(val_root, labels, frames_of)[1] if val_root is not None else None
    modality = _modality(root, train + (val or []))
    return FolderLayout(root, labels, train, val, modality, train_root, val_root)


def _clip_frames(items: list[Sample], frames: int | None) -> int:
    if frames is not None:
        return frames
    counts: dict[int, Path] = {}
    for it in items:
        counts.setdefault(it.frames, it.path)
    if len(counts) > 1:
        examples = ", ".join(f"{n} in {p}" for n, p in sorted(counts.items())[:4])
        raise DataError(
            f"clips have different frame counts ({examples}); pass frames=N to resample every clip to N "
            "evenly spaced frames"
        )
    return next(iter(counts))


def _even(n: int, frames: int) -> list[int]:
    return [int(i) for i in np.round(np.linspace(0, n - 1, frames)).astype(int)]


def _image(path: Path) -> Image.Image:
    try:
        return open_image(path)
    except DataError as e:
        raise DataError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def _load_item(item: Sample, spec: InputSpec, frames: int):
    if item.kind == "image":
        return preprocess_image(_image(item.path), spec)
    idx = _even(item.frames, frames)
    if item.kind == "clip_dir":
        chosen = [_image(item.frame_files[i]) for i in idx]
    else:
        try:
            decoded = open_clip(item.path)
        except DataError as e:
            raise DataError(str(e) if str(item.path) in str(e) else f"{item.path}: {e}") from None
        if len(decoded) != item.frames:  # the header promised another count
            idx = _even(len(decoded), frames)
        chosen = [decoded[i] for i in idx]
    return preprocess_clip(chosen, spec)


def load_folder_splits(
    root: Path, spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None,
    progress: bool,
) -> Splits:  # fmt: skip
    """Loads an ImageFolder-style tree of images or clips (see the module docstring)."""
    layout = read_layout(root)
    train_items = layout.train
    rng = np.random.default_rng(seed)
    if layout.val is not None and layout.val_root is not None:
        val_items = layout.val
        layout_text = f"{layout.train_root.name}/ and {layout.val_root.name}/"
    else:
        y = np.array([it.label for it in train_items])
        tr, va = split_stratified(y, val_fraction, rng)
        train_items, val_items = [train_items[i] for i in tr], [train_items[i] for i in va]
        layout_text = f"split with val_fraction={val_fraction}, seed={seed}"
        if not val_items:
            raise DataError(f"{root} has too few samples for a validation split (one per class); add more")
    labels, modality = layout.labels, layout.modality
    shape: tuple[int, ...]
    if modality == "image":
        image_source_frames(str(root), frames)
        n_frames, sample_spec, shape = 1, spec, (3, spec.size, spec.size)
    else:
        if frames is None and spec.modality == "clip":
            frames = spec.frames  # what the model expects
        n_frames = _clip_frames(train_items + val_items, frames)
        sample_spec, shape = clip_spec(spec, n_frames), (n_frames, 3, spec.size, spec.size)
    chosen = []
    for items in (train_items, val_items):
        y = np.array([it.label for it in items])
        chosen.append([items[i] for i in take(y, limit, rng)])
    check_memory(str(root), sum(len(c) for c in chosen), n_frames, spec.size)
    data = [
        LabeledData(
            fill(c, lambda it: _load_item(it, sample_spec, n_frames), shape, f"{root.name} {name}", progress),
            labels_tensor([it.label for it in c]),
        )
        for c, name in zip(chosen, ("train", "val"), strict=True)
    ]
    kind = "clips" if modality == "clip" else "images"
    return Splits(
        data[0],
        data[1],
        labels,
        modality,
        n_frames,
        f"folder {root} ({kind}, {layout_text}; {len(data[0])} train / {len(data[1])} val)",
    )
