"""The labelled examples of a training job: unpacked from a zip or from ``image``/``label`` fields into a folder
of ``class/image`` (or ``class/clip/frames``, or ``class/clip.gif``) and checked before the job is accepted.

The hostile-input rules of ``/predict`` and ``/adapters`` apply: only the allow-listed image formats
(``adaptformer.data.decode.IMAGE_FORMATS``), ``max_image_pixels`` per image or frame, ``max_frames`` per clip;
and for the zip itself: member count, total unpacked bytes, compression ratio, and names that stay inside the
folder (no absolute paths, ``..``, backslashes, links or encrypted members). Only image headers are read here
(no pixels are decoded in the server process); the training worker decodes them with the same limits.
"""

from __future__ import annotations

import shutil
import stat
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image, UnidentifiedImageError

from adaptformer.data.decode import IMAGE_FORMATS
from adaptformer.data.folders import IMAGE_EXTENSIONS
from adaptformer_server.errors import InvalidInput, PayloadTooLarge
from adaptformer_server.settings import Settings

__all__ = ["ExamplesSummary", "check_examples", "unpack_fields", "unpack_zip"]

_MiB = 1024 * 1024
_SPLIT_NAMES = frozenset({"train", "val", "valid", "validation"})
_EXTENSION = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_CHUNK = 1024 * 1024
_LABEL_CHARS = 100


@dataclass
class ExamplesSummary:
    """What a job's examples hold: classes and counts, images or clips, frames of the clips."""

    classes: dict[str, int] = field(default_factory=dict)  # class -> examples (training split when split)
    modality: str = "image"
    frames: list[int] = field(default_factory=list)  # distinct frame counts of the clips
    split: bool = False  # the examples came with their own train/ and val/ folders
    pixels: int = 0

    @property
    def total(self) -> int:
        return sum(self.classes.values())

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "examples": self.total,
            "modality": self.modality,
            "frames": sorted(self.frames) if self.modality == "clip" else [1],
            "own_split": self.split,
        }


# -- names --------------------------------------------------------------------------------------------------------
def _ignored(parts: tuple[str, ...]) -> bool:
    """macOS resource forks and hidden files (``.DS_Store``) that archivers add: skipped, not refused."""
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _safe_parts(name: str) -> tuple[str, ...]:
    """The path parts of a zip member name, or InvalidInput for a name that could leave the folder."""
    shown = name[:200]
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidInput(f"examples zip: member {shown!r} has an absolute, drive or backslash path; refused")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise InvalidInput(f"examples zip: member {shown!r} points outside the folder ('..'); refused")
    if not parts:
        raise InvalidInput(f"examples zip: member {shown!r} has an empty name")
    if any(len(p) > 255 for p in parts):
        raise InvalidInput(f"examples zip: member {shown[:80]!r}... has a path part over 255 characters")
    return parts


def check_label(label: str) -> str:
    """A class name from a ``label`` field: a folder name of its own (no separators, not hidden, not a split)."""
    label = label.strip()
    if not label or len(label) > _LABEL_CHARS:
        raise InvalidInput(f"a `label` must have 1 to {_LABEL_CHARS} characters, got {len(label)}")
    if any(c in label for c in "/\\\x00") or label.startswith(".") or not label.isprintable():
        raise InvalidInput(f"label {label[:80]!r}: no slashes, control characters or leading dot")
    if label.lower() in _SPLIT_NAMES:
        raise InvalidInput(f"label {label!r} is reserved (train/val folder names); name the class otherwise")
    return label


# -- unpacking ----------------------------------------------------------------------------------------------------
def unpack_zip(source: IO[bytes], dest: Path, settings: Settings) -> None:
    """Unpacks an examples zip into ``dest`` after checking every member's name and size (raises before writing
    anything when the directory says too many members, too many bytes or a bomb's ratio)."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InvalidInput(f"`examples` is not a readable zip file ({e}); zip a folder of class/image files") from None
    with archive:
        members = archive.infolist()
        if len(members) > settings.max_example_files:
            raise PayloadTooLarge(
                f"examples zip has {len(members):,} members; the limit is {settings.max_example_files:,} "
                "(ADAPTFORMER_MAX_EXAMPLE_FILES)"
            )
        declared = sum(m.file_size for m in members)
        if declared > settings.max_examples_unzipped:
            raise PayloadTooLarge(
                f"examples zip unpacks to {declared:,} bytes; the limit is {settings.max_examples_unzipped:,} "
                "(ADAPTFORMER_MAX_EXAMPLES_UNZIPPED)"
            )
        chosen: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        for m in members:
            parts = _safe_parts(m.filename)
            mode = m.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                raise InvalidInput(f"examples zip: member {m.filename[:200]!r} is a symbolic link; refused")
            if m.is_dir() or _ignored(parts):
                continue
            if m.flag_bits & 0x1:
                raise InvalidInput(f"examples zip: member {m.filename[:200]!r} is encrypted; send a plain zip")
            if m.file_size > _MiB and m.file_size > settings.max_zip_ratio * max(m.compress_size, 1):
                raise PayloadTooLarge(
                    f"examples zip: member {m.filename[:200]!r} expands {m.file_size / max(m.compress_size, 1):,.0f} "
                    f"times ({m.compress_size:,} -> {m.file_size:,} bytes), more than the limit of "
                    f"{settings.max_zip_ratio:g} (ADAPTFORMER_MAX_ZIP_RATIO): refused as a zip bomb"
                )
            if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
                raise InvalidInput(
                    f"examples zip: {m.filename[:200]!r} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            chosen.append((m, parts))
        chosen = _strip_wrapper(chosen)
        written = 0
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for m, parts in chosen:
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(root):  # _safe_parts already refused such names
                raise InvalidInput(f"examples zip: member {m.filename[:200]!r} points outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(m) as src, open(target, "xb") as out:
                    left = m.file_size
                    while chunk := src.read(_CHUNK):
                        left -= len(chunk)
                        written += len(chunk)
                        if left < 0 or written > settings.max_examples_unzipped:
                            raise PayloadTooLarge(
                                f"examples zip: {m.filename[:200]!r} unpacks to more than it declares; refused"
                            )
                        out.write(chunk)
            except FileExistsError:
                raise InvalidInput(f"examples zip: {m.filename[:200]!r} appears twice") from None
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                raise InvalidInput(f"examples zip: cannot unpack {m.filename[:200]!r}: {e}") from None


def _strip_wrapper(
    chosen: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Drops one folder that holds everything (a zipped ``defects/`` folder), when class folders lie below it."""
    if not chosen:
        return chosen
    tops = {parts[0] for _, parts in chosen}
    if len(tops) == 1 and all(len(parts) >= 3 for _, parts in chosen):
        seconds = {parts[1] for _, parts in chosen}
        if len(seconds) >= 2 or seconds & _SPLIT_NAMES:
            return [(m, parts[1:]) for m, parts in chosen]
    return chosen


def unpack_fields(pairs: list[tuple[str, bytes]], dest: Path) -> None:
    """Writes ``(label, image bytes)`` pairs as ``dest/<label>/<n>.<ext>`` (the extension of the sniffed format)."""
    counts: Counter[str] = Counter()
    for label, data in pairs:
        label = check_label(label)
        fmt = _sniff(data)
        folder = dest / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{counts[label]:05d}{_EXTENSION.get(fmt, '.img')}").write_bytes(data)
        counts[label] += 1


def _sniff(data: bytes) -> str:
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as img:
                return str(img.format)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidInput(
            "an `image` field is not a readable image (PNG, JPEG, WebP, GIF, BMP or TIFF; no other format is decoded)"
        ) from None


# -- checking -------------------------------------------------------------------------------------------------
def _header(path: Path, rel: str, settings: Settings) -> tuple[int, int]:
    """(frames, pixels) from an image's header, refusing other formats and oversized images or clips."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=list(IMAGE_FORMATS)) as img:
                w, h = img.size
                n = int(getattr(img, "n_frames", 1)) if getattr(img, "is_animated", False) else 1
    except (UnidentifiedImageError, ValueError, SyntaxError):
        raise InvalidInput(f"examples: {rel} is not a readable image (PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"examples: {rel} is too large to decode") from None
    except OSError as e:
        raise InvalidInput(f"examples: cannot read {rel}: {e}") from None
    if w * h > settings.max_image_pixels:
        raise PayloadTooLarge(
            f"examples: {rel} is {w}x{h} pixels, more than the limit of {settings.max_image_pixels:,} "
            "(ADAPTFORMER_MAX_IMAGE_PIXELS)"
        )
    if n > settings.max_frames:
        raise PayloadTooLarge(f"examples: {rel} has {n} frames; the limit is {settings.max_frames} (max_frames)")
    return n, w * h * n


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _scan_split(root: Path, base: Path, settings: Settings, summary: ExamplesSummary, counts: Counter) -> None:
    classes = [p for p in _visible(root) if p.is_dir()]
    loose = [p for p in _visible(root) if p.is_file()]
    if loose:
        raise InvalidInput(
            f"examples: {loose[0].relative_to(base)} lies outside a class folder; put each image in "
            "<class>/<image>, one folder per class"
        )
    kinds: set[str] = set()
    for c in classes:
        for item in _visible(c):
            rel = str(item.relative_to(base))
            if item.is_file():
                n, pixels = _header(item, rel, settings)
                kinds.add("clip" if n > 1 else "image")
                if n > 1:
                    summary.frames.append(n)
            else:
                frames = [f for f in _visible(item) if f.is_file()]
                if not frames or any(f.is_dir() for f in _visible(item)):
                    raise InvalidInput(f"examples: {rel}/ must hold the frame images of one clip, and nothing else")
                if len(frames) > settings.max_frames:
                    raise PayloadTooLarge(
                        f"examples: clip {rel}/ has {len(frames)} frames; the limit is {settings.max_frames}"
                    )
                pixels = 0
                for f in frames:
                    n, p = _header(f, str(f.relative_to(base)), settings)
                    if n > 1:
                        raise InvalidInput(f"examples: frame {f.relative_to(base)} is itself animated")
                    pixels += p
                kinds.add("clip")
                summary.frames.append(len(frames))
            summary.pixels += pixels
            if summary.pixels > settings.max_examples_pixels:
                raise PayloadTooLarge(
                    f"examples: more than {settings.max_examples_pixels:,} pixels in all "
                    "(ADAPTFORMER_MAX_EXAMPLES_PIXELS); send fewer or smaller images"
                )
            counts[c.name] += 1
            if sum(counts.values()) > settings.max_examples:
                raise PayloadTooLarge(
                    f"examples: more than {settings.max_examples:,} images or clips; the limit is "
                    f"{settings.max_examples:,} (ADAPTFORMER_MAX_EXAMPLES)"
                )
    if len(kinds) > 1:
        raise InvalidInput("examples: still images and clips are mixed; send one kind per task")
    if kinds:
        summary.modality = kinds.pop()


def check_examples(root: Path, settings: Settings) -> ExamplesSummary:
    """Checks an unpacked examples folder (see the module docstring) and says what it holds.

    Raises:
        InvalidInput: not images, fewer than two classes or fewer than two examples in a class, mixed kinds.
        PayloadTooLarge: an image or clip over the pixel or frame limits, too many examples or pixels.
    """
    summary = ExamplesSummary()
    if not root.is_dir() or not any(root.iterdir()):
        raise InvalidInput("the examples hold no images: send a zip of <class>/<image> files, or image+label fields")
    train = root / "train"
    val = next((root / n for n in ("val", "valid", "validation") if (root / n).is_dir()), None)
    train_counts: Counter[str] = Counter()
    if train.is_dir() and val is not None:
        summary.split = True
        _scan_split(train, root, settings, summary, train_counts)
        val_counts: Counter[str] = Counter()
        modality = summary.modality
        _scan_split(val, root, settings, summary, val_counts)
        if summary.modality != modality:
            raise InvalidInput("examples: train/ and val/ hold different kinds (images and clips)")
        unknown = sorted(set(val_counts) - set(train_counts))
        if unknown:
            raise InvalidInput(f"examples: val/ has classes that train/ lacks: {', '.join(unknown[:10])}")
        if not val_counts:
            raise InvalidInput("examples: val/ holds no examples")
    else:
        _scan_split(root, root, settings, summary, train_counts)
    summary.classes = dict(sorted(train_counts.items()))
    if len(summary.classes) < 2:
        which = f" ({next(iter(summary.classes))})" if summary.classes else ""
        raise InvalidInput(f"the examples have {len(summary.classes)} class{which}; a classifier needs at least two")
    few = sorted(c for c, n in summary.classes.items() if n < 2)
    if few and not summary.split:
        raise InvalidInput(
            f"class {few[0]!r} has one example; each class needs at least two (one is held out for validation)"
        )
    summary.frames = sorted(set(summary.frames))
    return summary


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
