"""The labelled examples of a training job: unpacked from a zip or from ``image``/``label`` fields into a folder
of ``class/image`` (or ``class/clip/frames``, or ``class/clip.gif``) and checked before the job is accepted.

The hostile-input rules of ``/predict`` and ``/adapters`` apply: only the allow-listed image formats
(``adaptformer.data.decode.IMAGE_FORMATS``), ``max_image_pixels`` per image or frame, ``max_frames`` per clip;
and for the zip itself: member count, total unpacked bytes, compression ratio, and names that stay inside the
folder (no absolute paths, ``..``, backslashes, links or encrypted members) and that the file system can hold
(lengths in bytes, as it counts them; no deeper than the layouts go; no name both a file and a folder). A name or
file the file system refuses is the sender's mistake (400), never an internal error.

The layout is read by the library's one reader (:func:`adaptformer.data.folders.read_layout`), the one the
training worker reads the examples with, so a job trains on what was checked. Only image headers are read here
(no pixels are decoded in the server process); the training worker decodes them with the same limits.
"""

from __future__ import annotations

import errno
import stat
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from lzma import LZMAError
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image, UnidentifiedImageError

from adaptformer.data.decode import IMAGE_FORMATS
from adaptformer.data.folders import IMAGE_EXTENSIONS, FolderLayout, read_layout
from adaptformer.errors import DataError
from adaptformer_server.errors import InvalidInput, Overloaded, PayloadTooLarge
from adaptformer_server.limits import Limits
from adaptformer_server.settings import Settings

__all__ = ["ExamplesSummary", "check_class_name", "check_examples", "unpack_fields", "unpack_zip"]

_MiB = 1024 * 1024
_SPLIT_NAMES = frozenset({"train", "val", "valid", "validation"})
_EXTENSION = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_CHUNK = 1024 * 1024
_LABEL_CHARS = 100
_NAME_BYTES = 255  # one path component (NAME_MAX), in the file system's bytes
_PATH_BYTES = 4095  # a whole path (PATH_MAX, less its terminating NUL)
# The deepest layout: <wrapper>/<train|val>/<class>/<clip>/<frame>
_DEPTH = 5
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class ExamplesSummary:
    """What a job's examples hold: classes and counts, images or clips, frames of the clips."""

    classes: dict[str, int] = field(default_factory=dict)  # class -> examples (training split when split)
    modality: str = "image"
    frames: list[int] = field(default_factory=list)  # distinct frame counts of the clips
    split: bool = False  # the examples came with their own train/ and val/ folders
    pixels: int = 0
    held_out: int = 0  # examples of the val/ folder

    @property
    def total(self) -> int:
        return sum(self.classes.values())

    @property
    def labels(self) -> list[str]:
        return sorted(self.classes)

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
    return parts


def _check_storable(name: str, parts: tuple[str, ...]) -> None:
    """Refuses a member the layouts never read or the file system cannot hold (names count in UTF-8 bytes)."""
    long = next((p for p in parts if _utf8(p) > _NAME_BYTES), None)
    if long is not None:
        raise InvalidInput(
            f"examples zip: member {name[:80]!r}... has a name part of {_utf8(long):,} bytes in UTF-8 "
            f"({len(long):,} characters); file and folder names have at most {_NAME_BYTES} bytes"
        )
    if len(parts) > _DEPTH:
        raise InvalidInput(
            f"examples zip: member {name[:80]!r}... lies {len(parts) - 1} folders deep; the examples are "
            "<class>/<image>, <class>/<clip>/<frame> or <class>/<clip>.gif (inside train/ and val/, and one "
            "folder around everything at most)"
        )


def _utf8(name: str) -> int:
    """A name's length as the file system counts it: in bytes."""
    return len(name.encode("utf-8", "surrogateescape"))


def check_class_name(name: str) -> str:
    """A class name the server keeps: a folder name of its own (no separators, not hidden, at most 255 bytes) and
    one line of printable text (it is shown by every client, in the adapter's labels and description)."""
    shown = name[:80]
    if not name or any(c in name for c in "/\\\x00") or name.startswith("."):
        raise InvalidInput(f"class name {shown!r}: no slashes, no leading dot, not empty")
    if not name.isprintable():
        raise InvalidInput(f"class name {shown!r} holds a line break or control character; name it in plain text")
    if _utf8(name) > _NAME_BYTES:
        raise InvalidInput(
            f"class name {shown!r}... has {_utf8(name):,} bytes in UTF-8; a class name (a folder name) has at "
            f"most {_NAME_BYTES}"
        )
    return name


def check_label(label: str) -> str:
    """A class name from a ``label`` field (:func:`check_class_name`, at most 100 characters, not a split name)."""
    label = label.strip()
    if not label or len(label) > _LABEL_CHARS:
        raise InvalidInput(f"a `label` must have 1 to {_LABEL_CHARS} characters, got {len(label)}")
    check_class_name(label)
    if label.lower() in _SPLIT_NAMES:
        raise InvalidInput(f"label {label!r} is reserved (train/val folder names); name the class otherwise")
    return label


@contextmanager
def _file_system(what: str) -> Iterator[None]:
    """Refusals of the file system while examples are written or read: the sender's (400), but a full disk is
    the server's (503)."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise Overloaded(f"the server has no room for these examples ({e.strerror}); retry later", 60) from None
        raise InvalidInput(f"{what}: {e.strerror or e}") from None


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
        packed = sum(m.compress_size for m in members)
        if declared > _MiB and declared > settings.max_zip_ratio * max(packed, 1):  # many small members add up
            raise PayloadTooLarge(
                f"examples zip expands {declared / max(packed, 1):,.0f} times in all ({packed:,} -> {declared:,} "
                f"bytes), more than the limit of {settings.max_zip_ratio:g} (ADAPTFORMER_MAX_ZIP_RATIO): refused as a "
                "zip bomb"
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
            _check_storable(m.filename, parts)
            chosen.append((m, parts))
        chosen = _strip_wrapper(chosen)
        _check_names(chosen, dest)
        with _file_system("examples zip: cannot unpack into the job's folder"):
            dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for m, parts in chosen:
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(root):  # _safe_parts already refused such names
                raise InvalidInput(f"examples zip: member {m.filename[:200]!r} points outside the folder")
            written += _unpack_member(archive, m, target, settings.max_examples_unzipped - written)


def _unpack_member(archive: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path, room: int) -> int:
    """Writes one member to ``target`` (a new file), at most its declared size and ``room`` bytes; returns the
    bytes written."""
    shown = repr(m.filename[:200])
    written, left = 0, m.file_size
    try:
        with _file_system(f"examples zip: cannot unpack {shown}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(m) as src, open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    left -= len(chunk)
                    written += len(chunk)
                    if left < 0 or written > room:
                        raise PayloadTooLarge(f"examples zip: {shown} unpacks to more than it declares; refused")
                    out.write(chunk)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError, zlib.error, LZMAError) as e:
        raise InvalidInput(f"examples zip: cannot unpack {shown}: {e}") from None
    return written


def _check_names(chosen: list[tuple[zipfile.ZipInfo, tuple[str, ...]]], dest: Path) -> None:
    """Refuses, before anything is written, names the file system cannot hold: one path both a file and a folder
    (``a/x.png`` and ``a/x.png/y.png``), a name twice, a path longer than the file system takes."""
    files: dict[tuple[str, ...], str] = {}
    for m, parts in chosen:
        if parts in files:
            raise InvalidInput(f"examples zip: {m.filename[:200]!r} appears twice")
        files[parts] = m.filename
    for parts, name in files.items():
        folder = next((parts[:i] for i in range(1, len(parts)) if parts[:i] in files), None)
        if folder is not None:
            raise InvalidInput(
                f"examples zip: {'/'.join(folder)[:200]!r} is a file, and {name[:200]!r} puts it in a folder of "
                "that name; a path is a file or a folder, not both"
            )
        size = _utf8(str(dest.joinpath(*parts)))
        if size > _PATH_BYTES:
            raise InvalidInput(
                f"examples zip: member {name[:80]!r}... makes a path of {size:,} bytes; the file system takes "
                f"at most {_PATH_BYTES:,}"
            )


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
        with _file_system(f"label {label[:80]!r}: cannot write its images"):
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
    Limits.of(settings).check_image_size(w, h, f"examples: {rel}")
    Limits.of(settings).check_frames(n, f"examples: {rel}")
    return n, w * h * n


class _Headers:
    """Reads each example file's header once, with the limits, and adds up the pixels of all of them."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self.pixels = 0
        self._seen: dict[Path, int] = {}

    def frames(self, path: Path) -> int:
        """The frames of one image file (1 for a still one), refusing it over a limit."""
        if path not in self._seen:
            n, pixels = _header(path, str(path.relative_to(self.root)), self.settings)
            self._seen[path] = n
            self.pixels += pixels
            if self.pixels > self.settings.max_examples_pixels:
                raise PayloadTooLarge(
                    f"examples: more than {self.settings.max_examples_pixels:,} pixels in all "
                    "(ADAPTFORMER_MAX_EXAMPLES_PIXELS); send fewer or smaller images"
                )
        return self._seen[path]


def _read(root: Path, headers: _Headers) -> FolderLayout:
    """The examples' layout, by the library's reader; its refusals as InvalidInput, paths relative to the
    examples."""
    try:
        with _file_system("examples: cannot read them"):
            return read_layout(root, frames_of=headers.frames)
    except DataError as e:
        message = str(e).replace(f"{root}/", "").replace(str(root), "the examples")
        raise InvalidInput(f"examples: {message}") from None


def check_examples(root: Path, settings: Settings) -> ExamplesSummary:
    """Checks an unpacked examples folder (see the module docstring) and says what it holds.

    Raises:
        InvalidInput: not images, fewer than two classes or fewer than two examples in a class, mixed kinds, a
            class name that is not one line of text, anything the layout reader refuses.
        PayloadTooLarge: an image or clip over the pixel or frame limits, too many examples or pixels.
    """
    if not root.is_dir() or not any(root.iterdir()):
        raise InvalidInput("the examples hold no images: send a zip of <class>/<image> files, or image+label fields")
    headers = _Headers(root, settings)
    layout = _read(root, headers)
    samples = layout.samples
    if len(samples) > settings.max_examples:
        raise PayloadTooLarge(
            f"examples: {len(samples):,} images or clips; the limit is {settings.max_examples:,} "
            "(ADAPTFORMER_MAX_EXAMPLES)"
        )
    for name in layout.labels:
        check_class_name(name)
    frames: set[int] = set()
    for sample in samples:
        rel = sample.path.relative_to(root)
        if sample.kind == "clip_dir":
            Limits.of(settings).check_frames(sample.frames, f"examples: clip {rel}/")
            for f in sample.frame_files:
                if headers.frames(f) > 1:
                    raise InvalidInput(f"examples: frame {f.relative_to(root)} is itself animated")
        else:
            headers.frames(sample.path)
        if sample.kind != "image":
            frames.add(sample.frames)
    counts = Counter(layout.labels[s.label] for s in layout.train)
    summary = ExamplesSummary(
        classes=dict(sorted(counts.items())),
        modality=layout.modality,
        frames=sorted(frames),
        split=layout.val is not None,
        pixels=headers.pixels,
        held_out=len(layout.val or []),
    )
    few = sorted(c for c, n in summary.classes.items() if n < 2)
    if few and not summary.split:
        raise InvalidInput(
            f"class {few[0]!r} has one example; each class needs at least two (one is held out for validation)"
        )
    return summary
