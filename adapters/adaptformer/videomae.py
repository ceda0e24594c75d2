"""VideoMAE checkpoints as the project's video backbone: a timm ``VisionTransformer`` with the real tubelet kernel.

VideoMAE (Tong et al., 2022) is a plain pre-norm ViT over space-time tokens: a Conv3d tubelet embedding
(``tubelet x patch x patch``, stride = kernel), a fixed sine-cosine table over the flattened ``T/tubelet x h x w``
token positions, no class token, and mean pooling (then ``fc_norm`` in the fine-tuned models). Its blocks are the
ViT's own, so they load into timm ``Block``\\s unchanged (``qkv`` bias = ``[q_bias, 0, v_bias]``), and everything
the project does with a timm ViT works as it is: AdaptFormer branches, the engine's mixed batches, the adapter
file and the backbone fingerprint.

Two checkpoint layouts load (:func:`load_videomae`):

- the original one (``encoder.patch_embed.proj.weight`` ``[D, 3, 2, 16, 16]``, ``encoder.blocks.N.attn.qkv.weight``
  with ``q_bias``/``v_bias``, ``mlp.fc1``/``fc2``, ``encoder.norm`` or ``fc_norm``; the ``encoder.`` prefix only in
  the pre-training checkpoints, the decoder's tensors ignored; a learned ``pos_embed`` refused: the table must be
  rebuilt for the frames served), LayerNorm eps 1e-6;
- Hugging Face's ``VideoMAEModel``/``VideoMAEForVideoClassification`` (``[videomae.]embeddings.patch_embeddings
  .projection``, ``encoder.layer.N.attention.attention.query/key/value`` with ``q_bias``/``v_bias`` or Linear
  biases, ``layernorm_before/after``, ``intermediate.dense``, ``output.dense``, ``layernorm`` or ``fc_norm``): a
  model folder (``config.json`` gives the heads, image size, frames and LayerNorm eps) or one weights file (the
  ``VideoMAEConfig`` defaults: eps 1e-12). Hugging Face's ``fc_norm`` is a LayerNorm with torch's default eps 1e-5.

The model's ``patch_embed.proj`` is a :class:`TubeletProjection`: :class:`~adaptformer.video.VideoViT` runs its
3D kernel on clips and rebuilds the sine-cosine table for the frames served (VideoMAE's table depends on the token
count only). A still image goes through the kernel summed over time, with the first time slot's positions: it
embeds exactly like a clip of ``tubelet`` copies of the image (one tubelet), so an image task on a VideoMAE
backbone sees what the video model sees of a still scene.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adaptformer.errors import AdaptformerError

__all__ = [
    "VIDEOMAE_NAMES",
    "TubeletProjection",
    "is_video_pretrained",
    "is_videomae",
    "load_videomae",
    "read_checkpoint",
    "sinusoid_table",
    "videomae_from_state",
]

# Backbone names: the heads of each size (a weights file does not say; a Hugging Face folder's config does).
VIDEOMAE_NAMES: dict[str, int | None] = {
    "videomae": None,
    "videomae-small": 6,
    "videomae-base": 12,
    "videomae-large": 16,
    "videomae-huge": 16,
}
_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Tensors of a checkpoint that are not the encoder: the pre-training decoder, a classifier.
_IGNORED = ("decoder.", "encoder_to_decoder.", "mask_token", "head.", "classifier.")


def is_videomae(name: str) -> bool:
    """Whether a backbone name asks for a VideoMAE checkpoint (``videomae``, ``videomae-base``...)."""
    return name in VIDEOMAE_NAMES


def is_video_pretrained(vit: nn.Module) -> bool:
    """Whether ``vit`` (or the image ViT of a video model) embeds tubelets with a kernel of its own (VideoMAE's
    :class:`TubeletProjection`) rather than an image patch kernel inflated over time."""
    vit = getattr(vit, "vit", vit)
    return isinstance(getattr(getattr(vit, "patch_embed", None), "proj", None), TubeletProjection)


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """Fixed sine-cosine table ``[positions, dim]`` (the transformer's original position code, VideoMAE's table)."""
    pos = torch.arange(positions, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


class TubeletProjection(nn.Module):
    """A tubelet embedding's Conv3d kernel ``[dim, in_chans, tubelet, ph, pw]`` where a ViT has its Conv2d.

    Called on images ``[B, C, H, W]`` (the timm patch embedding), it applies the kernel summed over time: an image
    is one tubelet of ``tubelet`` identical frames. :class:`~adaptformer.video.VideoViT` runs the 3D kernel itself.
    """

    def __init__(self, dim: int, in_chans: int, tubelet: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, in_chans, tubelet, *patch))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.tubelet = tubelet
        self.in_channels = in_chans
        self.out_channels = dim
        self.kernel_size = tuple(patch)
        self.stride = tuple(patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.sum(2), self.bias, stride=self.stride)

    def clips(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips ``[B, C, T, H, W]`` to ``[B, dim, T / tubelet, h, w]`` with the 3D kernel."""
        return F.conv3d(clips, self.weight, self.bias, stride=(self.tubelet, *self.stride))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, tubelet={self.tubelet}, kernel={self.kernel_size}"


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors of a checkpoint file or Hugging Face model folder, and the folder's ``config.json`` (or ``None``).

    Files: safetensors, or a torch file read with ``weights_only`` (``{"model": ...}`` and ``{"module": ...}``
    unwrapped; the original training checkpoints' ``args`` Namespace allowed). Folders: ``model.safetensors``,
    a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``.

    Raises:
        AdaptformerError: missing path, no weights in the folder, unreadable config or file.
    """
    path = Path(path)
    if not path.exists():
        raise AdaptformerError(f"VideoMAE weights not found: {path}")
    config = None
    if path.is_dir():
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text())
            except (OSError, ValueError) as e:
                raise AdaptformerError(f"{cfg_file}: not a readable JSON config ({e})") from None
            if not isinstance(config, dict):
                raise AdaptformerError(f"{cfg_file}: the config is not a JSON object")
        index = path / "model.safetensors.index.json"
        if (path / "model.safetensors").is_file():
            files = [path / "model.safetensors"]
        elif index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise AdaptformerError(f"{index}: not a readable shard index ({e})") from None
            files = [path / s for s in shards]
        elif (path / "pytorch_model.bin").is_file():
            files = [path / "pytorch_model.bin"]
        else:
            raise AdaptformerError(
                f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin in the folder"
            )
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(_read_file(f))
        return state, config
    return _read_file(path), None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AdaptformerError(f"VideoMAE weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise many types for a damaged or foreign file
        raise AdaptformerError(f"cannot read weights {path} ({type(e).__name__}: {e})") from None
    for key in ("model", "module", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdaptformerError(f"{path}: not a state dict of tensors")
    return state


def _layout(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """``("hf" | "original", prefix of the encoder's keys)``."""
    for prefix in ("videomae.", ""):
        if f"{prefix}embeddings.patch_embeddings.projection.weight" in state:
            return "hf", prefix
    for prefix in ("encoder.", ""):
        if f"{prefix}patch_embed.proj.weight" in state and state[f"{prefix}patch_embed.proj.weight"].ndim == 5:
            return "original", prefix
    sample = ", ".join(sorted(state)[:4])
    raise AdaptformerError(
        "not a VideoMAE checkpoint: expected 'encoder.patch_embed.proj.weight' (a Conv3d kernel, the original "
        f"layout) or 'videomae.embeddings.patch_embeddings.projection.weight' (Hugging Face); found {sample}..."
    )


def _zeros_unless(t: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(n, dtype=like.dtype) if t is None else t


def _convert(state: dict[str, torch.Tensor], layout: str, prefix: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The encoder's tensors under timm's names, and the source keys used."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor | None:
        t = state.get(key)
        if t is not None:
            used.add(key)
        return t

    def need(key: str) -> torch.Tensor:
        t = take(key)
        if t is None:
            raise AdaptformerError(f"VideoMAE checkpoint ({layout} layout): tensor {key!r} is missing")
        return t

    out: dict[str, torch.Tensor] = {}
    p = prefix
    if layout == "hf":
        out["patch_embed.proj.weight"] = need(f"{p}embeddings.patch_embeddings.projection.weight")
        out["patch_embed.proj.bias"] = need(f"{p}embeddings.patch_embeddings.projection.bias")
        depth = _count(state, f"{p}encoder.layer.")
        for i in range(depth):
            s, d = f"{p}encoder.layer.{i}.", f"blocks.{i}."
            a = f"{s}attention.attention."
            q, k, v = need(f"{a}query.weight"), need(f"{a}key.weight"), need(f"{a}value.weight")
            out[f"{d}attn.qkv.weight"] = torch.cat([q, k, v])
            qb = take(f"{a}q_bias")
            qb = take(f"{a}query.bias") if qb is None else qb
            vb = take(f"{a}v_bias")
            vb = take(f"{a}value.bias") if vb is None else vb
            kb = take(f"{a}key.bias")
            out[f"{d}attn.qkv.bias"] = torch.cat([_zeros_unless(t, q.shape[0], q) for t in (qb, kb, vb)])
            for src, dst in (
                ("attention.output.dense", "attn.proj"),
                ("layernorm_before", "norm1"),
                ("layernorm_after", "norm2"),
                ("intermediate.dense", "mlp.fc1"),
                ("output.dense", "mlp.fc2"),
            ):
                out[f"{d}{dst}.weight"] = need(f"{s}{src}.weight")
                out[f"{d}{dst}.bias"] = need(f"{s}{src}.bias")
        norms = {"norm": f"{p}layernorm.", "fc_norm": "fc_norm."}
    else:
        out["patch_embed.proj.weight"] = need(f"{p}patch_embed.proj.weight")
        out["patch_embed.proj.bias"] = need(f"{p}patch_embed.proj.bias")
        depth = _count(state, f"{p}blocks.")
        for i in range(depth):
            s, d = f"{p}blocks.{i}.", f"blocks.{i}."
            qkv = need(f"{s}attn.qkv.weight")
            n = qkv.shape[0] // 3
            bias = take(f"{s}attn.qkv.bias")
            if bias is None:
                qb, vb = take(f"{s}attn.q_bias"), take(f"{s}attn.v_bias")
                bias = torch.cat(
                    [_zeros_unless(qb, n, qkv), torch.zeros(n, dtype=qkv.dtype), _zeros_unless(vb, n, qkv)]
                )
            out[f"{d}attn.qkv.weight"], out[f"{d}attn.qkv.bias"] = qkv, bias
            for name in ("attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{d}{name}.weight"] = need(f"{s}{name}.weight")
                out[f"{d}{name}.bias"] = need(f"{s}{name}.bias")
            for g, ls in (("gamma_1", "ls1"), ("gamma_2", "ls2")):
                gamma = take(f"{s}{g}")
                if gamma is not None:
                    out[f"{d}{ls}.gamma"] = gamma
        norms = {"norm": f"{p}norm.", "fc_norm": "fc_norm."}
    if depth == 0:
        raise AdaptformerError(f"VideoMAE checkpoint ({layout} layout): no encoder blocks found")
    for dst, src in norms.items():
        w, b = take(f"{src}weight"), take(f"{src}bias")
        if w is not None and b is not None:
            out[f"{dst}.weight"], out[f"{dst}.bias"] = w, b
    return out, used


def _check_fixed_positions(pos: torch.Tensor | None, dim: int) -> None:
    """A saved encoder position table must be VideoMAE's fixed sine-cosine one (a learned table is refused)."""
    if pos is None:
        return
    rows = pos.numel() // dim if pos.shape[-1] == dim else 0
    if not rows or not torch.allclose(pos.reshape(rows, dim).float(), sinusoid_table(rows, dim), atol=1e-5):
        raise AdaptformerError(
            f"this VideoMAE checkpoint has a learned position embedding (shape {list(pos.shape)}); only the fixed "
            "sine-cosine table is supported (it is rebuilt for the frames a task uses, a learned one could not be)"
        )


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Blocks under ``prefix`` (``prefix<N>.``), checked to be numbered 0..N-1."""
    heads = (k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix))
    found = {int(h) for h in heads if h.isdigit()}
    if found and found != set(range(len(found))):
        raise AdaptformerError(f"VideoMAE checkpoint: blocks under {prefix!r} are not numbered 0..{len(found) - 1}")
    return len(found)


def videomae_from_state(
    state: dict[str, torch.Tensor],
    config: dict | None = None,
    name: str = "videomae",
    *,
    num_heads: int | None = None,
    img_size: int | None = None,
    layer_norm_eps: float | None = None,
) -> VisionTransformer:
    """A timm VisionTransformer holding a VideoMAE encoder (see the module docstring), frozen-ready, in eval mode.

    Args:
        state: The checkpoint's tensors, either layout.
        config: A Hugging Face ``config.json`` (heads, image size, frames, LayerNorm eps, activation).
        name: The backbone name (``videomae-base``...): gives the heads when nothing else does.
        num_heads: Attention heads (default: the config's, the name's, else from the width: 384 -> 6, 768 -> 12,
            1024 and 1280 -> 16).
        img_size: Input size (default: the config's, else 224).
        layer_norm_eps: The blocks' LayerNorm eps (default: the config's, else 1e-12 for Hugging Face's layout and
            1e-6 for the original one).

    Raises:
        AdaptformerError: not a VideoMAE checkpoint, a tensor missing or stray, or a setting that does not fit.
    """
    config = config or {}
    layout, prefix = _layout(state)
    tensors, used = _convert(state, layout, prefix)
    pos_key = f"{prefix}pos_embed" if layout == "original" else f"{prefix}embeddings.position_embeddings"
    _check_fixed_positions(state.get(pos_key), int(tensors["patch_embed.proj.weight"].shape[0]))
    used.add(pos_key)
    if prefix == "encoder.":
        used.add("pos_embed")  # a pre-training checkpoint's top-level table is the decoder's
    stray = sorted(
        k
        for k in state
        if k not in used and not k.startswith(_IGNORED) and not k.removeprefix(prefix).startswith(_IGNORED)
    )
    if stray:
        raise AdaptformerError(f"VideoMAE checkpoint ({layout} layout): unexpected tensors {stray[:4]}")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise AdaptformerError(f"VideoMAE config: hidden_act {act!r} is not supported (only exact 'gelu')")
    kernel = tensors["patch_embed.proj.weight"]
    dim, in_chans, tubelet, ph, pw = (int(s) for s in kernel.shape)
    hidden = int(tensors["blocks.0.mlp.fc1.weight"].shape[0])
    depth = sum(1 for k in tensors if k.endswith(".attn.qkv.weight"))
    heads = num_heads or config.get("num_attention_heads") or VIDEOMAE_NAMES.get(name) or _HEADS_BY_WIDTH.get(dim)
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise AdaptformerError(
            f"VideoMAE of width {dim}: cannot tell its attention heads ({heads!r}); name its size "
            "(videomae-small/base/large/huge) or load a Hugging Face folder with config.json"
        )
    size = img_size or config.get("image_size") or 224
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]  # a config may give [224, 224]
    if not isinstance(size, int) or size % ph or size % pw:
        raise AdaptformerError(f"VideoMAE image size {size!r} is not a multiple of its {ph}x{pw} patches")
    default_eps = 1e-12 if layout == "hf" else 1e-6
    eps = float(layer_norm_eps if layer_norm_eps is not None else config.get("layer_norm_eps", default_eps))
    has_fc_norm, has_norm = "fc_norm.weight" in tensors, "norm.weight" in tensors
    vit = VisionTransformer(
        img_size=size,
        patch_size=(ph, pw),
        in_chans=in_chans,
        num_classes=0,
        global_pool="avg",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        qkv_bias=True,
        init_values=1.0 if "blocks.0.ls1.gamma" in tensors else None,
        class_token=False,
        fc_norm=has_fc_norm,
        final_norm=has_fc_norm or has_norm,
        norm_layer=partial(nn.LayerNorm, eps=eps),
        weight_init="skip",
    )
    if has_fc_norm:
        # Hugging Face's classifier norm is a LayerNorm with torch's default eps; the original one uses the blocks'.
        vit.fc_norm = nn.LayerNorm(dim, eps=1e-5 if layout == "hf" else eps)
        vit.norm = nn.LayerNorm(dim, eps=eps) if has_norm else nn.Identity()
    vit.patch_embed.proj = TubeletProjection(dim, in_chans, tubelet, (ph, pw))
    grid = vit.patch_embed.num_patches
    del vit.pos_embed  # VideoMAE's positions are fixed: a buffer (not a weight), the first time slot's rows
    vit.register_buffer("pos_embed", sinusoid_table(grid, dim).unsqueeze(0), persistent=False)
    missing, unexpected = vit.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise AdaptformerError(f"VideoMAE checkpoint does not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    frames = config.get("num_frames", 16)
    vit.pretrained_cfg = {  # type: ignore[assignment]  # what spec_from_model and the adapter's backbone name read
        "architecture": name,
        "input_size": (in_chans, size, size),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "interpolation": "bilinear",
        "num_frames": frames if isinstance(frames, int) else 16,
        "tubelet": tubelet,
        "layout": layout,
    }
    return vit.eval()


def load_videomae(
    path: str | Path,
    name: str = "videomae",
    *,
    num_heads: int | None = None,
    img_size: int | None = None,
    layer_norm_eps: float | None = None,
) -> VisionTransformer:
    """Loads a VideoMAE checkpoint (file or Hugging Face model folder; either layout) into a timm ViT.

    See :func:`videomae_from_state` for the arguments.
    """
    state, config = read_checkpoint(path)
    return videomae_from_state(
        state, config, name, num_heads=num_heads, img_size=img_size, layer_norm_eps=layer_norm_eps
    )
