"""Whether an adapter's parts fit together and fit a backbone: the shape rules and :class:`BackboneSpec` (no torch).

The tensors a header names must agree with its metadata (:func:`check_tensor_shapes`, the branch shapes of
:func:`branch_shapes`, one label per head output: :func:`check_labels`, the one place of that rule for the header,
the loaded tensors and a task taken out of a model); :class:`BackboneSpec` says whether a file fits a backbone from
its header alone (:meth:`BackboneSpec.check_header`) or, once loaded, from its modules
(:meth:`BackboneSpec.check_task`). See docs/ADAPTER_FORMAT.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError

if TYPE_CHECKING:
    from torch import nn

    from adaptformer.adapter_header import Header
    from adaptformer.config import AdapterConfig
    from adaptformer.input_spec import InputSpec
    from adaptformer.metadata import AdapterMetadata
    from adaptformer.task import TaskAdapter

__all__ = ["BackboneSpec", "branch_shapes", "check_labels", "check_tensor_shapes"]


def check_labels(labels: int, outputs: int, source: str, how: str = "", head_ok: bool = True) -> None:
    """One label per head output: the rule between an adapter's labels and its head.

    Args:
        labels: How many labels the adapter lists.
        outputs: How many outputs (rows) its head has.
        source: Names the file or task in the message.
        how: Where the head's size was read, said in the message (`` (metadata 'num_classes')``).
        head_ok: ``False`` when the head is malformed (not 2-D, or a bias of another size): refused as well.

    Raises:
        AdapterFormatError: they disagree.
    """
    if not head_ok or outputs != labels:
        raise AdapterFormatError(f"{source}: head has {outputs} outputs{how} but metadata lists {labels} labels")


def branch_shapes(dim: int, config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of one AdaptMLP branch of width ``dim`` (its state dict; a test holds them equal)."""
    r = config.bottleneck
    shapes: dict[str, tuple[int, ...]] = {
        "down.weight": (r, dim),
        "down.bias": (r,),
        "up.weight": (dim, r),
        "up.bias": (dim,),
    }
    if config.needs_own_norm:
        shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    if config.learnable_scale:
        shapes["scale"] = ()
    return shapes


def check_tensor_shapes(metadata: AdapterMetadata, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """The head and the branches the metadata names are there, with shapes that agree with each other.

    Raises:
        AdapterFormatError: a tensor missing, stray or of a shape the metadata disagrees with.
    """
    head, bias = shapes.get("head.weight"), shapes.get("head.bias")
    for name, t in (("head.weight", head), ("head.bias", bias)):
        if t is None:
            raise AdapterFormatError(f"{source}: tensor {name!r} is missing")
    assert head is not None and bias is not None
    classes = len(metadata.labels)
    check_labels(
        classes,
        head[0] if head else 0,
        source,
        f" (shapes {list(head)} and {list(bias)})",
        head_ok=len(head) == 2 and bias == (classes,),
    )
    layers = list(metadata.layers)
    listed = {str(i) for i in layers}
    stray = sorted(n for n in shapes if n.startswith("adapters.") and n.split(".")[1] not in listed)
    if stray:
        raise AdapterFormatError(
            f"{source}: unexpected tensors {stray[:3]}: they belong to no block of metadata 'layers' {layers}"
        )
    if metadata.config is None:
        return
    config = metadata.config
    by_dim: dict[int, dict[str, tuple[int, ...]]] = {}
    for i in layers:
        down = shapes.get(f"adapters.{i}.down.weight")
        if down is None or len(down) != 2 or not 1 <= down[1] <= 65_536:
            raise AdapterFormatError(f"{source}: tensor 'adapters.{i}.down.weight' is missing or not 2-D")
        if down[1] not in by_dim:
            by_dim[down[1]] = branch_shapes(down[1], config)
        for name, shape in by_dim[down[1]].items():
            got = shapes.get(f"adapters.{i}.{name}")
            if got is None:
                raise AdapterFormatError(f"{source}: tensor 'adapters.{i}.{name}' is missing")
            if got != shape:
                raise AdapterFormatError(
                    f"{source}: tensor 'adapters.{i}.{name}' has shape {list(got) if got else 'none'}, "
                    f"expected {list(shape)} (config {config.to_json()})"
                )


@dataclass(frozen=True)
class BackboneSpec:
    """What an adapter must match to run on a backbone: every "fits this backbone" rule, in one place.

    :meth:`check_header` decides from a file's header alone (the store, the watcher, an upload before its tensors
    are read); :meth:`check_task` from a loaded task (the engine, ``load_adapter``). Both apply the same rules.

    Attributes:
        fingerprint: The frozen backbone's fingerprint.
        depth: Its block count.
        embed_dim: Its token width.
        num_features: The width of its pooled features (the head's input).
        img_size: The input size it takes (``None``: any size).
        supports_clips: Whether it can read clips (a VideoViT can wrap it).
        max_frames: Most frames a clip may have where the backbone is served (``None``: no limit).
        patch: Its patch kernel (height, width), which a clip task's temporal kernel must match.
        in_chans: Its input channels, idem.
    """

    fingerprint: str
    depth: int
    embed_dim: int
    num_features: int
    img_size: int | None = None
    supports_clips: bool = True
    max_frames: int | None = None
    patch: tuple[int, int] | None = None
    in_chans: int | None = None

    @classmethod
    def of(cls, backbone: nn.Module, fingerprint: str | None = None, max_frames: int | None = None) -> BackboneSpec:
        """The spec of a timm ViT (or a model wrapping one), read from its modules (imports torch)."""
        from adaptformer.fingerprint import backbone_fingerprint
        from adaptformer.model import base_vit
        from adaptformer.video import clip_support

        vit = base_vit(backbone)
        fixed = not getattr(vit, "dynamic_img_size", False)
        img = getattr(getattr(vit, "patch_embed", None), "img_size", None)
        proj = getattr(getattr(vit, "patch_embed", None), "proj", None)
        kernel = getattr(proj, "kernel_size", None)
        return cls(
            fingerprint=fingerprint or backbone_fingerprint(vit),
            depth=len(vit.blocks),
            embed_dim=vit.embed_dim,
            num_features=vit.num_features,
            img_size=int(img[0]) if fixed and img is not None and img[0] == img[1] else None,
            supports_clips=clip_support(vit) is None,
            max_frames=max_frames,
            patch=(int(kernel[0]), int(kernel[1])) if kernel is not None else None,
            in_chans=getattr(proj, "in_channels", None),
        )

    def _check_fingerprint(self, backbone: str, fingerprint: str, source: str) -> None:
        if fingerprint != self.fingerprint:
            raise IncompatibleAdapterError(
                f"{source} was trained on backbone {backbone[:200]!r} with fingerprint {fingerprint[:80]}; this "
                f"server's backbone has fingerprint {self.fingerprint}",
                check="fingerprint",
            )

    def _check_widths(self, head_features: int, branches: dict[int, int], source: str) -> None:
        """``branches``: block index -> the width its branch takes (checked first: the likelier cause)."""
        for i, width in sorted(branches.items()):
            if i >= self.depth or width != self.embed_dim:
                raise IncompatibleAdapterError(
                    f"{source}: branch of block {i} (width {width}) does not fit a backbone of {self.depth} blocks "
                    f"of width {self.embed_dim}",
                    check="shapes",
                )
        if head_features != self.num_features:
            raise IncompatibleAdapterError(
                f"{source}: its head takes {head_features} features; the backbone gives {self.num_features}",
                check="shapes",
            )

    def check_header(self, header: Header, source: str) -> None:
        """Raises IncompatibleAdapterError (with the failing check) unless the file fits."""
        metadata, shapes = header.metadata, header.shapes
        self._check_fingerprint(metadata.backbone, metadata.backbone_fingerprint, source)
        # parse_header made sure the head and every listed branch are there, 2-D
        self._check_widths(
            shapes["head.weight"][1], {i: shapes[f"adapters.{i}.down.weight"][1] for i in metadata.layers}, source
        )
        self.check_input(metadata.input, source)

    def check_task(self, task: TaskAdapter, source: str | None = None) -> None:
        """Raises IncompatibleAdapterError (with the failing check) unless a loaded task fits, its clip task's
        temporal part included."""
        source = source or f"adapter {task.name!r}"
        self._check_fingerprint(task.info.backbone, task.info.fingerprint, source)
        branches = {i: branch.down.in_features for i, branch in task.branches()}
        self._check_widths(task.head.in_features, branches, source)
        self.check_input(task.info.input, source)
        if task.temporal is not None:
            why = (
                "the backbone has no patch projection"
                if self.patch is None or self.in_chans is None
                else task.temporal.check(self.embed_dim, self.patch, self.in_chans)
            )
            if why:
                raise IncompatibleAdapterError(f"{source} does not fit this backbone: {why}", check="shapes")

    def check_input(self, spec: InputSpec, source: str) -> None:
        """Checks the adapter's input size, modality and frames against the backbone and the server's limit."""
        if self.img_size is not None and spec.size != self.img_size:
            raise IncompatibleAdapterError(
                f"{source} takes {spec.size}x{spec.size} inputs; this backbone takes {self.img_size}x{self.img_size}",
                check="shapes",
            )
        if spec.modality == "clip" and not self.supports_clips:
            raise IncompatibleAdapterError(
                f"{source} is a clip task; this backbone cannot read clips (it needs a Conv2d patch embedding "
                "and absolute position embeddings)",
                check="modality",
            )
        if spec.modality == "clip" and self.max_frames is not None and spec.frames > self.max_frames:
            raise IncompatibleAdapterError(
                f"{source} takes clips of {spec.frames} frames; this server takes at most {self.max_frames} "
                "(max_frames)",
                check="frames",
            )
