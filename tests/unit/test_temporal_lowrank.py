"""The within-budget temporal parts (``low``, ``proj``): fresh = identity, blind to stills, in the file (format 3),
refused by a format-2 reader as a newer format, served in mixed batches like each task alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import adaptformer as af
from adaptformer.engine import PATHS
from adaptformer.metadata import NewerFormatError
from adaptformer.temporal import TemporalConfig, TemporalPart
from tests.support import adapted, clips, images, max_diff, read_file, rewrite

SMALL = ["low", "proj", "low+proj", "low+proj+mix"]
TOL = 1e-5


@torch.no_grad()
def _randomize(part: TemporalPart | None, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in part.parameters() if part is not None else ():
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def _clip_model(backbone: nn.Module, temporal: str, seed: int = 0, frames: int = 4) -> nn.Module:
    video = af.video_vit(copy.deepcopy(backbone), frames=frames, tubelet=2, temporal=TemporalConfig.parse(temporal))
    model = adapted(video, af.AdapterConfig(bottleneck=8), num_classes=3, seed=seed)
    _randomize(model.temporal, seed)
    return model


@pytest.mark.parametrize("temporal", SMALL)
@torch.no_grad()
def test_fresh_part_is_identity_and_trained_part_sees_order(backbone: nn.Module, temporal: str) -> None:
    x = clips(2, 4)
    fresh = af.video_vit(backbone, frames=4, tubelet=2, temporal=TemporalConfig.parse(temporal))
    empty = af.video_vit(backbone, frames=4, tubelet=2, temporal=TemporalConfig(diff=False))
    assert max_diff(fresh.embed(x), empty.embed(x)) == 0.0
    model = _clip_model(backbone, temporal)
    assert max_diff(model(x), model(x[:, [1, 0, 2, 3]])) > 1e-2  # frame order inside a tubelet is visible


@pytest.mark.parametrize("temporal", ["low", "proj", "low+proj"])
@torch.no_grad()
def test_still_clip_is_unchanged(backbone: nn.Module, temporal: str) -> None:
    still = images(2).unsqueeze(1).expand(-1, 4, -1, -1, -1)
    trained = af.video_vit(backbone, frames=4, tubelet=2, temporal=TemporalConfig.parse(temporal))
    _randomize(trained.temporal)
    fresh = af.video_vit(backbone, frames=4, tubelet=2, temporal=TemporalConfig(diff=False))
    assert max_diff(trained.embed(still), fresh.embed(still)) <= 1e-5


def test_small_parts_stay_within_a_tenth_of_diff_on_a_real_size_backbone() -> None:
    """On ViT-S/16 (patch 16, width 384, tubelet 2) ``low+proj`` is at most 0.3% of the frozen backbone, where
    ``diff`` alone is over 2%."""
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    frozen = sum(p.numel() for p in vit.parameters())

    def share(t: str) -> float:
        part = TemporalPart(TemporalConfig.parse(t), vit.embed_dim, (16, 16), 3, tubelet=2, slots=4)
        return sum(p.numel() for p in part.parameters()) / frozen

    assert share("low+proj") <= 0.003 and share("diff") > 0.02
    assert share("low+proj") * 10 < share("diff")
    assert share("proj") * frozen == 2 * vit.embed_dim


@torch.no_grad()
def test_round_trip_is_format3_and_old_readers_refuse_it(backbone: nn.Module, tmp_path: Path) -> None:
    model = _clip_model(backbone, "low+proj+mix")
    path = af.save_adapter(model, tmp_path / "t.safetensors", task="t")
    tensors, meta = read_file(path)
    assert meta["format_version"] == "3"
    assert json.loads(meta["temporal"])["patch"] == list(backbone.patch_embed.proj.kernel_size)
    assert {k for k in tensors if k.startswith("temporal.")} == {
        "temporal.low_down", "temporal.low_up", "temporal.proj", "temporal.mix"
    }  # fmt: skip
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    engine.add_task("t", path)
    x = clips(3, 4)
    assert max_diff(torch.stack(engine(x, "t")), model(x)) <= TOL
    # A file without a format-3 part stays format 2 (an older reader still loads it).
    plain = af.save_adapter(_clip_model(backbone, "diff"), tmp_path / "d.safetensors", task="d")
    assert read_file(plain)[1]["format_version"] == "2"
    assert "low" not in json.loads(read_file(plain)[1]["temporal"])
    # What a format-2 reader does with it: refused as a newer format, with the versions it reads.
    from adaptformer import metadata

    old = pytest.MonkeyPatch()
    old.setattr(metadata, "READABLE_VERSIONS", ("1", "2"))
    try:
        with pytest.raises(NewerFormatError, match="'3'"):
            af.load_adapter(path)
    finally:
        old.undo()


def test_bad_small_part_tensors_refused(backbone: nn.Module, tmp_path: Path) -> None:
    path = af.save_adapter(_clip_model(backbone, "low+proj"), tmp_path / "t.safetensors", task="t")
    gone = rewrite(
        path, tmp_path / "g.safetensors", tensors=lambda t: {k: v for k, v in t.items() if k != "temporal.low_up"}
    )
    with pytest.raises(af.AdapterFormatError, match=r"temporal\.low_up"):
        af.load_adapter(gone)
    nopatch = rewrite(path, tmp_path / "p.safetensors",
                      meta=lambda m: {**m, "temporal": json.dumps({"low": True, "proj": True})})  # fmt: skip
    with pytest.raises(af.AdapterFormatError, match="patch"):
        af.load_adapter(nopatch)
    unknown = rewrite(path, tmp_path / "u.safetensors",
                      meta=lambda m: {**m, "temporal": json.dumps({"diff": True, "shift": True})})  # fmt: skip
    with pytest.raises(af.AdapterFormatError, match="unknown"):
        af.load_adapter(unknown)
    task = af.load_adapter(path, backbone)
    task.temporal = TemporalPart(TemporalConfig.parse("low+proj"), backbone.embed_dim, (2, 2), 3, 2, 2)
    with pytest.raises(af.IncompatibleAdapterError, match="temporal"):
        af.check_compatible(task, backbone)


@pytest.mark.parametrize("path", PATHS)
@torch.no_grad()
def test_mixed_batch_equals_each_task_alone(backbone: nn.Module, tmp_path: Path, path: str) -> None:
    engine = af.MultiTaskViT(copy.deepcopy(backbone), path=path)
    models = {t: _clip_model(backbone, t, seed=i) for i, t in enumerate(["low", "proj", "low+proj", "diff"])}
    models["v1"] = adapted(af.video_vit(copy.deepcopy(backbone), frames=4, tubelet=2), af.AdapterConfig(bottleneck=8),
                           num_classes=3, seed=9)  # fmt: skip
    for name, model in models.items():
        engine.add_task(name, af.save_adapter(model, tmp_path / f"{name}.safetensors", task=name))
    x = clips(6, 4)
    tasks = ["low", "proj", "v1", "low+proj", "diff", "low"]
    out = engine(x, tasks)
    for i, name in enumerate(tasks):
        assert max_diff(out[i], engine(x[i : i + 1], name)[0]) <= TOL, (i, name)
        assert max_diff(out[i], models[name](x[i : i + 1])[0]) <= TOL, (i, name)
