"""The knobs of a training job, declared once: the query parameters of ``POST /tasks/{task}/train``, the
``params`` of the job's record and what its worker trains with.

A knob that sets a field of the library's :class:`~adaptformer.train.TrainConfig` (or of its nested
:class:`~adaptformer.config.AdapterConfig`) names that field in ``LIBRARY_FIELDS``: its default is the library's,
except where the server's small-data recipe (``SMALL_DATA``) differs, and :meth:`TrainKnobs.train_config` is the
one place a knob becomes a field (text values through the field's own parser, ``parse_layers`` for ``layers``).
The other knobs say how the examples are read (``frames``, ``val_fraction``) and what the adapter's metadata says
(``description``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adaptformer.config import AdapterConfig
from adaptformer.train import SMALL_DATA as LIBRARY_SMALL_DATA
from adaptformer.train import TrainConfig

__all__ = ["LIBRARY_FIELDS", "SMALL_DATA", "TrainKnobs"]

# knob -> the TrainConfig field it sets ("adapter.x": a field of its AdapterConfig)
LIBRARY_FIELDS: dict[str, str] = {
    "method": "method",
    "bottleneck": "adapter.bottleneck",
    "scale": "adapter.scale",
    "layers": "adapter.layers",
    "epochs": "epochs",
    "lr": "lr",
    "batch_size": "batch_size",
    "seed": "seed",
}
# Defaults where they differ from TrainConfig's: the library's small-data recipe (adaptformer.train.SMALL_DATA,
# which `adaptformer train` also takes for a set of at most 200 examples per class), by knob name. A job's
# examples are a small set.
SMALL_DATA: dict[str, Any] = {
    knob: LIBRARY_SMALL_DATA[path] for knob, path in LIBRARY_FIELDS.items() if path in LIBRARY_SMALL_DATA
}
_ADAPTER_FIELDS = {f.name: f for f in dataclasses.fields(AdapterConfig)}


def _library_default(path: str) -> Any:
    value: Any = TrainConfig()
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _default(knob: str) -> Any:
    """A knob's default: the small-data recipe's, else the library's."""
    return SMALL_DATA[knob] if knob in SMALL_DATA else _library_default(LIBRARY_FIELDS[knob])


class TrainKnobs(BaseModel):
    """The knobs of one training job (the ``adaptformer train`` flags of the same names); bounds are checked here,
    the library's own rules by :meth:`train_config`."""

    model_config = ConfigDict(frozen=True)

    method: Annotated[Literal["adaptformer", "linear"], Field(description="AdaptFormer branches or a linear probe")] = (
        _default("method")
    )
    bottleneck: Annotated[int, Field(ge=1, le=512, description="hidden width d^ of each branch")] = _default(
        "bottleneck"
    )
    scale: Annotated[float, Field(gt=0, le=10, description="scale s of the branch output")] = _default("scale")
    layers: Annotated[str, Field(max_length=200, description="all, first:k, last:k or indices 0,1,2")] = _default(
        "layers"
    )
    epochs: Annotated[int, Field(ge=1, description="passes over the training split")] = _default("epochs")
    lr: Annotated[float, Field(gt=0, le=1, description="peak learning rate")] = _default("lr")
    batch_size: Annotated[int, Field(ge=1, le=1024, description="samples per step")] = _default("batch_size")
    frames: Annotated[int | None, Field(ge=1, description="frames per clip (clips of another length resampled)")] = None
    val_fraction: Annotated[float, Field(gt=0, lt=1, description="held-out share per class (no val/ folder)")] = 0.2
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = _default("seed")
    description: Annotated[str, Field(max_length=300, description="what the task answers (adapter metadata)")] = ""

    def train_config(self, device: str) -> TrainConfig:
        """The library's recipe with these knobs (its own defaults for every field no knob sets).

        Raises:
            ValueError: a value the library refuses (``layers=first:0``, ``layers=1,a``).
        """
        recipe: dict[str, Any] = {}
        adapter: dict[str, Any] = {}
        for knob, path in LIBRARY_FIELDS.items():
            value = getattr(self, knob)
            if path.startswith("adapter."):
                name = path.removeprefix("adapter.")
                parse = _ADAPTER_FIELDS[name].metadata.get("parse")
                adapter[name] = parse(value) if parse is not None else value
            else:
                recipe[path] = value
        return TrainConfig(**recipe, adapter=AdapterConfig(**adapter), device=device)
