"""A clip task's temporal part: frame order becomes visible, stills stay images, old files answer as before."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import adaptformer as af
from adaptformer.engine import PATHS
from adaptformer.metadata import FORMAT_VERSION
from adaptformer.model import image_tokens
from adaptformer.temporal import TemporalConfig, TemporalPart
from tests.support import IMG, adapted, clips, images, make_vit, max_diff, read_file, rewrite

DATA = Path(__file__).parent / "data"
ALL = TemporalConfig(diff=True, time=True, mix=True)
TOL = 1e-5


@torch.no_grad()
def _randomize(part: TemporalPart | None, seed: int = 0, std: float = 0.2) -> None:
    """Non-zero temporal weights, so that every part matters."""
    gen = torch.Generator().manual_seed(seed)
    for p in part.parameters() if part is not None else ():
        p.copy_(std * torch.randn(p.shape, generator=gen))


def _clip_model(
    backbone: nn.Module, frames: int, tubelet: int, temporal: TemporalConfig | None, seed: int = 0, classes: int = 3
) -> nn.Module:
    video = af.video_vit(copy.deepcopy(backbone), frames=frames, tubelet=tubelet, temporal=temporal)
    model = adapted(video, af.AdapterConfig(bottleneck=8), num_classes=classes, seed=seed)
    _randomize(model.temporal, seed)
    return model


@pytest.mark.parametrize(
    ("temporal", "tubelet"),
    # mix works across time slots, so it sees the order of frames only with one frame per slot
    [("diff", 1), ("diff", 2), ("diff+time+mix", 1), ("diff+time+mix", 2), ("mix", 1)],
)
@torch.no_grad()
def test_swapping_frames_inside_a_tubelet_changes_the_output(backbone: nn.Module, temporal: str, tubelet: int) -> None:
    """With a temporal part the task sees frame order; without one (format 1) a tubelet is an average."""
    x = clips(2, 4)
    swapped = x[:, [1, 0, 2, 3]]
    model = _clip_model(backbone, 4, tubelet, TemporalConfig.parse(temporal))
    assert max_diff(model(x), model(swapped)) > 1e-2
    legacy = _clip_model(backbone, 4, 2, None)
    assert max_diff(legacy(x), legacy(swapped)) < 1e-4


@pytest.mark.parametrize("kind", ["tiny-custom", "registers", "no-class-token"])
@torch.no_grad()
def test_one_frame_clip_embeds_exactly_like_its_image(kind: str) -> None:
    """Slot 0's time code is zero and every part is zero on a still: a one-frame clip is its image."""
    vit = make_vit(kind)
    video = af.video_vit(vit, frames=1, tubelet=1, temporal=ALL)
    _randomize(video.temporal)
    img = images(2)
    assert max_diff(video.embed(img.unsqueeze(1)), image_tokens(vit, img)) <= 1e-6


@pytest.mark.parametrize(("frames", "tubelet"), [(4, 2), (4, 1), (6, 2)])
@torch.no_grad()
def test_still_clip_equals_the_image_in_every_slot(backbone: nn.Module, frames: int, tubelet: int) -> None:
    """A still clip: slot 0's tokens are the image's tokens; the parts add nothing but the later slots' codes."""
    video = af.video_vit(backbone, frames=frames, tubelet=tubelet, temporal=TemporalConfig(diff=True, mix=True))
    _randomize(video.temporal)
    img = images(2)
    tokens = video.embed(img.unsqueeze(1).expand(-1, frames, -1, -1, -1))
    image = image_tokens(backbone, img)
    patches = image.shape[1] - 1
    slots = tokens[:, 1:].reshape(2, video.time_slots, patches, -1)
    assert max_diff(tokens[:, :1], image[:, :1]) <= 1e-6
    assert max_diff(slots[:, 0], image[:, 1:]) <= 1e-5
    # Without a learned time embedding, the parts are blind to a still clip: zeroing them changes nothing.
    fresh = af.video_vit(backbone, frames=frames, tubelet=tubelet, temporal=TemporalConfig(diff=True, mix=True))
    assert max_diff(fresh.embed(img.unsqueeze(1).expand(-1, frames, -1, -1, -1)), tokens) <= 1e-5


@torch.no_grad()
def test_fresh_temporal_part_changes_nothing_and_the_time_code_starts_at_zero(backbone: nn.Module) -> None:
    """Zero-initialised parts equal no parts; the learned time embedding has no slot 0."""
    x = clips(2, 4)
    fresh = af.video_vit(backbone, frames=4, tubelet=2, temporal=ALL)
    empty = af.video_vit(backbone, frames=4, tubelet=2, temporal=TemporalConfig(diff=False))
    assert max_diff(fresh.embed(x), empty.embed(x)) == 0.0
    assert fresh.temporal.time.shape == (1, backbone.embed_dim)  # 2 slots, slot 0 has none
    assert af.video_vit(backbone, frames=2, tubelet=2, temporal=ALL).temporal.time is None


def test_fingerprint_does_not_change(backbone: nn.Module) -> None:
    """The temporal part is the task's: the frozen backbone and its fingerprint stay the image ViT's."""
    fp = af.backbone_fingerprint(backbone)
    model = _clip_model(backbone, 4, 2, ALL)
    assert af.backbone_fingerprint(model) == fp
    assert all(p.requires_grad for p in model.temporal.parameters())
    assert not any(p.requires_grad for n, p in model.vit.named_parameters() if ".adapter." not in n and "head" not in n)


@torch.no_grad()
def test_adapter_file_round_trip(backbone: nn.Module, tmp_path: Path) -> None:
    """Format 2 stores the temporal part (tensors and metadata) and a loaded task answers like its model."""
    model = _clip_model(backbone, 4, 2, ALL)
    path = af.save_adapter(model, tmp_path / "t.safetensors", task="t")
    tensors, meta = read_file(path)
    assert meta["format_version"] == FORMAT_VERSION == "2"
    assert json.loads(meta["temporal"]) == {"diff": True, "time": True, "mix": True}
    assert {k for k in tensors if k.startswith("temporal.")} == {"temporal.diff", "temporal.time", "temporal.mix"}
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    task = engine.add_task("t", path)
    assert task.info.input.modality == "clip" and task.temporal is not None
    x = clips(3, 4)
    out = engine(x, "t")
    ref = model(x)
    assert max(max_diff(out[i], ref[i]) for i in range(3)) <= TOL


def test_bad_temporal_tensors_refused(backbone: nn.Module, tmp_path: Path) -> None:
    """A missing or misshapen temporal tensor is a format error; another width does not fit the backbone."""
    path = af.save_adapter(_clip_model(backbone, 4, 2, ALL), tmp_path / "t.safetensors", task="t")
    missing = rewrite(
        path, tmp_path / "m.safetensors", tensors=lambda t: {k: v for k, v in t.items() if k != "temporal.mix"}
    )
    with pytest.raises(af.AdapterFormatError, match=r"temporal\.mix"):
        af.load_adapter(missing)
    short = rewrite(path, tmp_path / "s.safetensors", tensors=lambda t: {**t, "temporal.time": torch.zeros(3, 64)})
    with pytest.raises(af.AdapterFormatError, match=r"temporal\.time"):
        af.load_adapter(short)
    task = af.load_adapter(path, backbone)
    task.temporal = TemporalPart(ALL, 32, (8, 8), 3, 2, 2)  # as if trained on a backbone of width 32
    with pytest.raises(af.IncompatibleAdapterError, match="temporal"):
        af.check_compatible(task, backbone)


@pytest.mark.parametrize("path", PATHS)
@torch.no_grad()
def test_mixed_image_and_clip_tasks_equal_each_task_alone(backbone: nn.Module, tmp_path: Path, path: str) -> None:
    """One engine: image tasks, clip tasks with different temporal parts, a format-1 clip task, and clip tasks of
    another frame count. Batches are grouped by input shape; every row equals its input run alone, on every path."""
    engine = af.MultiTaskViT(copy.deepcopy(backbone), path=path)
    models = {
        "img": adapted(backbone, af.AdapterConfig(bottleneck=4), num_classes=4, seed=1),
        "diff": _clip_model(backbone, 4, 2, TemporalConfig(diff=True), seed=2),
        "all": _clip_model(backbone, 4, 2, ALL, seed=3, classes=5),
        "v1": _clip_model(backbone, 4, 2, None, seed=4),
        "none": _clip_model(backbone, 4, 2, TemporalConfig(diff=False), seed=5),
        "short": _clip_model(backbone, 2, 2, ALL, seed=6),
        "short-v1": _clip_model(backbone, 2, 2, None, seed=7),
    }
    for i, (name, model) in enumerate(models.items()):
        task = (
            af.extract_task(copy.deepcopy(model), name)
            if i % 2
            else af.save_adapter(model, tmp_path / f"{name}.safetensors", task=name)
        )
        engine.add_task(name, task)
    batches = [
        (images(5), ["img"] * 5),
        (clips(7, 4), ["diff", "v1", "all", "none", "diff", "all", "v1"]),
        (clips(4, 2, seed=3), ["short", "short-v1", "short-v1", "short"]),
    ]
    for x, tasks in batches:
        out = engine(x, tasks)
        for i, name in enumerate(tasks):
            alone = engine(x[i : i + 1], name)[0]
            assert max_diff(out[i], alone) <= TOL, (i, name)
            assert max_diff(out[i], models[name](x[i : i + 1])[0]) <= TOL, (i, name)


@torch.no_grad()
def test_format1_clip_file_loads_and_answers_as_before(tmp_path: Path) -> None:
    """The motion demo of format 1 (kept as a fixture) loads, has no temporal part and gives the logits it gave
    before format 2 (recorded with the format-1 code)."""
    from adaptformer.backbone import load_backbone

    path = DATA / "motion_format1.safetensors"
    assert read_file(path)[1]["format_version"] == "1"
    engine = af.MultiTaskViT(load_backbone().model)
    task = engine.add_task("motion", path)
    assert task.temporal is None and task.info.input.frames == 8
    expected = json.loads((DATA / "motion_format1_logits.json").read_text())["logits"]
    x = torch.randn(3, 8, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    out = engine(x, "motion")
    assert max(max_diff(out[i], torch.tensor(expected[i])) for i in range(3)) <= 1e-5
    # A format-1 file rewritten as format 2 without a temporal part loads the same way.
    v2 = rewrite(path, tmp_path / "m.safetensors", meta=lambda m: {**m, "format_version": "2"})
    engine.add_task("again", v2)
    assert max(max_diff(a, b) for a, b in zip(engine(x, "again"), out, strict=True)) == 0.0


def test_temporal_config_parsing() -> None:
    assert TemporalConfig.parse("diff+time") == TemporalConfig(diff=True, time=True, mix=False)
    assert TemporalConfig.parse("none") == TemporalConfig(diff=False)
    assert str(TemporalConfig.parse("mix,diff")) == "diff+mix"
    with pytest.raises(ValueError, match="temporal"):
        TemporalConfig.parse("shift")
    assert IMG == 32  # the clip helpers' frame size the tests above rely on


def test_training_recipe_gives_clip_tasks_their_part(backbone: nn.Module, tmp_path: Path) -> None:
    """``temporal="auto"``: the default part for trained clip tasks, none for a linear probe (head only);
    the part trains with the task and ends up in its adapter file, counted as the task's parameters."""
    from adaptformer.backbone import Backbone
    from adaptformer.data import LabeledData, Splits
    from adaptformer.preprocess import InputSpec
    from adaptformer.train import DEFAULT_TEMPORAL, TrainConfig, build_model, fit, save_result

    def fresh() -> Backbone:  # build_model adapts the backbone it is given in place
        return Backbone(copy.deepcopy(backbone), "tiny", InputSpec(size=IMG, mean=(0.5,) * 3, std=(0.5,) * 3))

    linear = build_model(fresh(), TrainConfig(method="linear", device="cpu"), 3, frames=4)
    assert str(linear.temporal.config) == "none" and not list(linear.temporal.parameters())
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", adapter=af.AdapterConfig(bottleneck=4))
    bb = fresh()
    model = build_model(bb, cfg, 3, frames=4)
    assert str(model.temporal.config) == DEFAULT_TEMPORAL
    before = {n: p.detach().clone() for n, p in model.temporal.named_parameters()}
    data = LabeledData(clips(8, 4), torch.arange(8) % 3)
    splits = Splits(data, data, ["a", "b", "c"], "clip", 4, "random clips")
    result = fit(model, splits, cfg, progress=False)
    assert all(not torch.equal(p, before[n]) for n, p in model.temporal.named_parameters())
    frozen = sum(p.numel() for p in backbone.parameters()) - sum(p.numel() for p in backbone.head.parameters())
    assert result.metrics["percent_of_backbone"] == pytest.approx(
        100 * result.metrics["trainable_params"] / frozen, abs=1e-3
    )
    save_result(result, tmp_path / "t.safetensors", "t", splits, bb)
    task = af.load_adapter(tmp_path / "t.safetensors", backbone)
    assert str(task.temporal.config) == DEFAULT_TEMPORAL
    assert (task.info.input.frames, task.info.input.tubelet) == (4, 2)
