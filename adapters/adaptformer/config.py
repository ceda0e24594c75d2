"""AdapterConfig: every knob of AdaptFormer's ablations, with the paper's defaults.

Its docstring's ``Args:`` are also the help of ``adaptformer train``'s flags, which are generated from the fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

__all__ = ["AdapterConfig", "parse_layers"]

Mode = Literal["parallel", "sequential"]
AdapterInput = Literal["ln", "raw", "own_ln"]


def parse_layers(value: str) -> str | tuple[int, ...]:
    """A ``layers`` value as text (``--layers``, a training job's knob): ``0,1,2`` (or one index) as a tuple of
    indices, anything else as given (:class:`AdapterConfig` checks it).

    Raises:
        ValueError: a list of something other than integers (``1,a``).
    """
    if "," in value or value.strip().lstrip("-").isdigit():
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"layers {value[:40]!r}: a list of block indices holds integers, like 0,1,2") from None
    return value


@dataclass(frozen=True)
class AdapterConfig:
    """How the AdaptMLP branches are built and where they go.

    Args:
        bottleneck: Hidden width d^ of each branch (1..512; 64 in the paper).
        scale: Scale s of the branch output (0.1 in the paper).
        learnable_scale: Train s, starting from ``scale``.
        layers: Blocks that get a branch: ``all``, ``first:k``, ``last:k`` or block indices (a list; on the
            command line ``0,1,2``).
        mode: ``parallel`` (beside the MLP, the paper's choice) or ``sequential`` (on the MLP's output).
        adapter_input: ``ln``: the block's LN2(x'), the paper's formula; ``raw``: x' itself, as in the authors'
            released code; ``own_ln``: a LayerNorm of the branch's own. In sequential mode the input is the
            MLP output, which ``ln`` and ``own_ln`` normalise with the branch's own LayerNorm.
        dropout: Dropout on the bottleneck activations during training.
    """

    bottleneck: int = 64
    scale: float = 0.1
    learnable_scale: bool = False
    layers: str | tuple[int, ...] = field(default="all", metadata={"parse": parse_layers})
    mode: Mode = "parallel"
    adapter_input: AdapterInput = "ln"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or not 1 <= self.bottleneck <= 512:
            raise ValueError(f"bottleneck must be an integer in 1..512, got {self.bottleneck!r}")
        if self.mode not in ("parallel", "sequential"):
            raise ValueError(f"mode must be 'parallel' or 'sequential', got {self.mode!r}")
        if self.adapter_input not in ("ln", "raw", "own_ln"):
            raise ValueError(f"adapter_input must be 'ln', 'raw' or 'own_ln', got {self.adapter_input!r}")
        if not _real(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        if not isinstance(self.learnable_scale, bool):
            raise ValueError(f"learnable_scale must be true or false, got {self.learnable_scale!r}")
        if not _real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        self._check_layers_syntax()

    def _check_layers_syntax(self) -> None:
        layers = self.layers
        if isinstance(layers, tuple):
            if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"layers as a list must hold block indices, got {list(layers)!r}")
            return
        if layers == "all":
            return
        head, _, k = str(layers).partition(":")
        if head not in ("first", "last") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"layers must be 'all', 'first:k', 'last:k' or a list of indices, got {layers!r}")

    @property
    def needs_own_norm(self) -> bool:
        return self.adapter_input == "own_ln" or (self.mode == "sequential" and self.adapter_input == "ln")

    def resolve_layers(self, depth: int) -> list[int]:
        """The sorted block indices that get a branch in a model of ``depth`` blocks."""
        layers = self.layers
        if layers == "all":
            return list(range(depth))
        if isinstance(layers, tuple):
            out = sorted({i + depth if i < 0 else i for i in layers})
            bad = [i for i in out if not 0 <= i < depth]
            if bad:
                raise ValueError(f"layers {bad} out of range for a model with {depth} blocks")
            return out
        head, _, k = str(layers).partition(":")
        n = int(k)
        if n > depth:
            raise ValueError(f"layers {layers!r} asks for {n} blocks but the model has {depth}")
        return list(range(n)) if head == "first" else list(range(depth - n, depth))

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["layers"], tuple):
            d["layers"] = list(d["layers"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("layers"), list):
            known["layers"] = tuple(known["layers"])
        return cls(**known)


def _real(v: object) -> bool:
    """A finite JSON number (bools are not numbers here, although Python says they are)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
