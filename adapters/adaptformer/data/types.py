"""The two containers every data source returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LabeledData", "Splits"]


@dataclass
class LabeledData:
    """Preprocessed samples and their class ids.

    Attributes:
        x: ``[N, 3, S, S]`` images or ``[N, T, 3, S, S]`` clips, float32, already normalised with the
            :class:`~adaptformer.preprocess.InputSpec` (the same code the server runs on a request).
        y: ``[N]`` int64 class ids.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Splits:
    """A training and a validation split with their class names.

    Attributes:
        train: Training samples.
        val: Validation samples.
        labels: Class names; the index is the class id.
        modality: ``image`` or ``clip``.
        frames: Frames per clip (1 for images).
        source: Human-readable description of where the data came from (goes into adapter metadata).
        description: One line saying what a task trained on this data answers (adapter metadata).
        input_note: What a caller of such a task must send (adapter metadata), e.g. the colour convention.
    """

    train: LabeledData
    val: LabeledData
    labels: list[str]
    modality: str
    frames: int
    source: str
    description: str = ""
    input_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.labels)
