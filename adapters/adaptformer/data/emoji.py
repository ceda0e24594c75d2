"""Emoji pictures classified by their Unicode group, rendered from the Debian Noto Color Emoji font.

Classes are the groups of ``emoji-test.txt`` (Debian ``unicode-data``) except ``Component``. Emoji are the
fully-qualified entries without skin-tone modifiers that the font draws as one non-blank glyph (ZWJ sequences
and flags included: Pillow lays them out with libraqm when present), at most :data:`EMOJI_PER_CLASS` per
group. The split is by emoji: validation emoji are never seen in training. Each emoji gives
:data:`EMOJI_COPIES` samples with a light random augmentation (scale, position, small rotation, background
colour). The rendered glyphs are cached in memory and in ``~/.cache/adaptformer`` (``ADAPTFORMER_CACHE_DIR``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from adaptformer.data._util import check_memory, fill, image_source_frames, labels_tensor, split_stratified, take
from adaptformer.data.types import LabeledData, Splits
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec, preprocess_image

__all__ = ["EMOJI_FONT", "EMOJI_TEST", "emoji_glyphs", "emoji_table", "load_emoji_splits"]

EMOJI_FONT = Path(os.environ.get("ADAPTFORMER_EMOJI_FONT", "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"))
EMOJI_TEST = Path(os.environ.get("ADAPTFORMER_EMOJI_TEST", "/usr/share/unicode/emoji/emoji-test.txt"))
EMOJI_PER_CLASS = 150
EMOJI_COPIES = 4
_FONT_SIZE = 109  # Noto Color Emoji is a bitmap font: it only renders at this size (136x128 glyphs)
_NATIVE = 136
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_CACHE_VERSION = 1
_MEMORY: dict[tuple, tuple[list[str], list[str], np.ndarray]] = {}


def _require_files() -> None:
    missing = [str(p) for p in (EMOJI_FONT, EMOJI_TEST) if not p.is_file()]
    if missing:
        raise DataError(
            f"emoji data not found ({', '.join(missing)}); install it with: "
            "sudo apt-get install fonts-noto-color-emoji unicode-data"
        )


def emoji_table(path: Path | None = None) -> list[tuple[str, str]]:
    """``(group, emoji)`` for every fully-qualified emoji without a skin-tone modifier, in file order."""
    path = path or EMOJI_TEST
    out, group = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if not line.strip() or line.startswith("#") or ";" not in line or group in (None, "Component"):
            continue
        codes, rest = line.split(";", 1)
        if rest.split("#", 1)[0].strip() != "fully-qualified":
            continue
        cps = [int(c, 16) for c in codes.split()]
        if any(c in _SKIN_TONES for c in cps):
            continue
        out.append((group, "".join(map(chr, cps))))
    return out


def _render(font: ImageFont.FreeTypeFont, text: str) -> Image.Image | None:
    box = font.getbbox(text)
    if box[2] - box[0] > _NATIVE + 4:  # not one glyph: the font has no ligature for this sequence
        return None
    img = Image.new("RGBA", (_NATIVE, _NATIVE), (0, 0, 0, 0))
    ImageDraw.Draw(img).text((0, (_NATIVE - 128) // 2), text, font=font, embedded_color=True)
    if img.getchannel("A").getbbox() is None:
        return None
    return img


def _cache_path(res: int) -> Path:
    base = Path(os.environ.get("ADAPTFORMER_CACHE_DIR") or Path.home() / ".cache" / "adaptformer")
    key = hashlib.sha256()
    for p in (EMOJI_FONT, EMOJI_TEST):
        st = p.stat()
        key.update(f"{p}:{st.st_size}:{st.st_mtime_ns};".encode())
    return base / f"emoji-glyphs-v{_CACHE_VERSION}-{res}-{key.hexdigest()[:16]}.npz"


def emoji_glyphs(res: int, progress: bool = True) -> tuple[list[str], list[str], np.ndarray]:
    """Every usable emoji rendered once: ``(groups, emojis, glyphs)``, glyphs uint8 ``[N, res, res, 4]`` RGBA.

    Cached in memory and on disk; a cache that cannot be written is silently skipped.
    """
    _require_files()
    res = min(res, _NATIVE)
    path = _cache_path(res)
    if (path, res) in _MEMORY:
        return _MEMORY[(path, res)]
    try:
        with np.load(path, allow_pickle=False) as z:
            result = ([str(g) for g in z["groups"]], [str(e) for e in z["emojis"]], z["glyphs"])
        _MEMORY[(path, res)] = result
        return result
    except (OSError, KeyError, ValueError):
        pass
    from tqdm.auto import tqdm

    font = ImageFont.truetype(str(EMOJI_FONT), _FONT_SIZE)
    notdef = _render(font, "\ue000")  # what the font draws for a code point it lacks
    notdef_bytes = notdef.tobytes() if notdef is not None else None
    groups, emojis, glyphs = [], [], []
    table = emoji_table()
    for group, text in tqdm(table, desc="rendering emoji", delay=2.0, disable=not progress, leave=False):
        img = _render(font, text)
        if img is None or img.tobytes() == notdef_bytes:
            continue
        if res != _NATIVE:
            img = img.resize((res, res), Image.Resampling.LANCZOS)
        groups.append(group)
        emojis.append(text)
        glyphs.append(np.asarray(img, dtype=np.uint8))
    if not glyphs:
        raise DataError(f"{EMOJI_FONT} rendered no emoji; reinstall: sudo apt-get install fonts-noto-color-emoji")
    result = (groups, emojis, np.stack(glyphs))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, groups=np.array(groups), emojis=np.array(emojis), glyphs=result[2])
        os.replace(tmp, path)
    except OSError:
        pass
    _MEMORY[(path, res)] = result
    return result


def _augment(glyph: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """The glyph at 55-100% of the square, rotated by up to 10 degrees, anywhere on a random plain colour."""
    g = Image.fromarray(glyph, "RGBA")
    side = max(4, round(size * rng.uniform(0.55, 1.0)))
    g = g.resize((side, side), Image.Resampling.BICUBIC if side > g.width else Image.Resampling.LANCZOS)
    g = g.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BICUBIC)
    background = Image.new("RGBA", (size, size), (*(int(v) for v in rng.integers(0, 256, size=3)), 255))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    background.alpha_composite(g, (x, y))
    return background.convert("RGB")


def load_emoji_splits(
    spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None, progress: bool
) -> Splits:
    """Emoji by Unicode group; validation emoji are unseen in training (split by emoji, per group)."""
    image_source_frames("emoji", frames)
    groups, emojis, glyphs = emoji_glyphs(spec.size, progress)
    labels = list(dict.fromkeys(groups))  # file (CLDR) order
    group_id = np.array([labels.index(g) for g in groups])
    rng = np.random.default_rng(seed)
    # At most EMOJI_PER_CLASS emoji per group, a seeded choice.
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(group_id == c))[:EMOJI_PER_CLASS] for c in range(len(labels))]
    )
    train_e, val_e = split_stratified(group_id[keep], val_fraction, rng)
    train_e, val_e = keep[train_e], keep[val_e]

    def samples(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emoji_idx = np.repeat(chosen, EMOJI_COPIES)
        copy = np.tile(np.arange(EMOJI_COPIES), len(chosen))
        return np.stack([emoji_idx, copy], 1), group_id[emoji_idx]

    out = []
    for split_id, chosen in enumerate((train_e, val_e)):
        items, y = samples(chosen)
        sel = take(y, limit, rng)
        out.append((split_id, items[sel], y[sel]))
    check_memory("emoji", sum(len(y) for _, _, y in out), 1, spec.size)

    def make(split_id: int):
        def one(item: np.ndarray):
            # The augmentation depends only on (seed, split, emoji, copy), not on limit or order.
            r = np.random.default_rng([seed, split_id, int(item[0]), int(item[1])])
            return preprocess_image(_augment(glyphs[item[0]], spec.size, r), spec)

        return one

    data = [
        LabeledData(
            fill(items, make(split_id), (3, spec.size, spec.size), f"emoji {('train', 'val')[split_id]}", progress),
            labels_tensor(y),
        )
        for split_id, items, y in out
    ]
    return Splits(
        data[0],
        data[1],
        labels,
        "image",
        1,
        f"emoji (Noto Color Emoji by Unicode group, {len(train_e)} train / {len(val_e)} unseen val emoji of "
        f"{len(emojis)}, {EMOJI_COPIES} augmented copies each; {len(data[0])} train / {len(data[1])} val samples, "
        f"seed={seed})",
    )
