"""Shared fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded, and do not fight other jobs for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vit_base() -> nn.Module:
    """A random-weight ViT-B/16 at 224 px without a head, built once (building it is the slow part)."""
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    """A tiny random ViT (tests.support.make_vit), one per test module: tests may adapt or wrap it."""
    from tests.support import make_vit

    return make_vit()


@pytest.fixture(scope="module")
def pets_model(backbone: nn.Module) -> nn.Module:
    """The backbone adapted with random non-zero adapters (tests.support.PETS_CONFIG) and a 3-class head."""
    from tests.support import PETS_CONFIG, PETS_LABELS, adapted

    return adapted(backbone, PETS_CONFIG, num_classes=len(PETS_LABELS))


@pytest.fixture
def pets_file(pets_model: nn.Module, tmp_path: Path) -> Path:
    """``pets_model`` saved as the adapter file of task ``pets`` (labels PETS_LABELS, metrics PETS_METRICS)."""
    import adaptformer as af
    from tests.support import PETS_LABELS, PETS_METRICS

    return af.save_adapter(
        pets_model, tmp_path / "pets.safetensors", task="pets", labels=PETS_LABELS, metrics=PETS_METRICS
    )
