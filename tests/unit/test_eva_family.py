"""The Eva family (EVA-02, Perception Encoder) and Beit as backbones: fresh adapters change nothing, every engine
path equals the adapted model, mixed batches equal each task alone, adapter files round-trip, the gathered path's
operator count does not grow with the tasks, and the families still refused say why."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import adaptformer as af
from adaptformer.backbone import load_backbone
from adaptformer.fit import BackboneSpec
from adaptformer.layer import block_family, run_block
from adaptformer.model import block_inputs
from adaptformer.video import VideoViT, clip_support
from tests.support import adapted, max_diff

SMALL = {"depth": 3, "embed_dim": 64, "num_heads": 2}
# Small random versions of each family's timm models (random weights; nothing is downloaded). Eva: rotary embedding
# and a packed SwiGLU MLP (eva02), layer scale (init_values), the split SwiGLU with its inner norm (scale_mlp, as
# eva02_base), the Perception Encoder's attention pooling (core) and its spatial and language variants; Beit: a relative position bias per block with layer scale,
# or one shared by all blocks.
FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "eva02": lambda: timm.create_model("eva02_tiny_patch14_224", img_size=42, **SMALL),
    "eva02-layer-scale-swiglu": lambda: timm.create_model(
        "eva02_tiny_patch14_224", img_size=42, init_values=0.5, scale_mlp=True, **SMALL
    ),
    "pe-core": lambda: timm.create_model("vit_pe_core_tiny_patch16_384", img_size=48, **SMALL),
    "pe-spatial": lambda: timm.create_model("vit_pe_spatial_tiny_patch16_512", img_size=48, **SMALL),
    "pe-lang": lambda: timm.create_model("vit_pe_lang_large_patch14_448", img_size=42, **SMALL),
    "beit": lambda: timm.create_model("beit_base_patch16_224", img_size=48, **SMALL),
    "beit-shared-bias": lambda: timm.create_model(
        "beit_base_patch16_224", img_size=48, use_rel_pos_bias=False, use_shared_rel_pos_bias=True, **SMALL
    ),
}
PATHS = ["slices", "gathered", "grouped"]
CONFIGS = [
    af.AdapterConfig(bottleneck=8),
    af.AdapterConfig(bottleneck=4, adapter_input="raw", layers="last:2", scale=0.3),
    af.AdapterConfig(bottleneck=6, adapter_input="own_ln", learnable_scale=True),
    af.AdapterConfig(bottleneck=5, mode="sequential", layers=(0, 2)),
    None,  # a linear probe
]


def _model(family: str, seed: int = 0) -> nn.Module:
    """The family's small model with random weights, its layer scales and position biases made non-trivial."""
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name or "relative_position_bias_table" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def _backbone(family: str, seed: int = 0) -> nn.Module:
    model = _model(family, seed)
    model.reset_classifier(0)
    return model


def _images(model: nn.Module, n: int, seed: int = 1) -> torch.Tensor:
    size = model.patch_embed.img_size[0]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _task_models(backbone: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for k, config in enumerate(CONFIGS):
        if config is None:
            torch.manual_seed(k)
            out[f"t{k}"] = af.linear_probe(copy.deepcopy(backbone), 2 + k).eval()
        else:
            out[f"t{k}"] = adapted(backbone, config, num_classes=2 + k, seed=k)
    return out


def _engine(backbone: nn.Module, models: dict[str, nn.Module], path: str) -> af.MultiTaskViT:
    engine = af.MultiTaskViT(copy.deepcopy(backbone), path=path)
    for name, model in models.items():
        engine.add_task(name, af.extract_task(model, name))
    return engine


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def backbone(family: str) -> nn.Module:
    return _backbone(family)


@pytest.fixture(scope="module")
def task_models(backbone: nn.Module) -> dict[str, nn.Module]:
    return _task_models(backbone)


@torch.no_grad()
@pytest.mark.parametrize("config", [c for c in CONFIGS if c is not None], ids=["ln", "raw", "own_ln", "sequential"])
def test_fresh_adapters_change_nothing(family: str, config: af.AdapterConfig) -> None:
    """Freshly added adapters leave the model's logits exactly as they were (max abs diff 0.0)."""
    model = _model(family)
    x = _images(model, 3)
    before = model(x)
    af.add_adapters(model, config)
    assert any(isinstance(b, af.AdaptedBlock) for b in model.blocks)
    assert max_diff(model(x), before) == 0.0


@torch.no_grad()
def test_run_block_is_the_family_block(backbone: nn.Module) -> None:
    """The one block function equals the family's own block forward (rotary embedding or relative position bias
    included) when it adds nothing, and hands ``add`` x', norm2(x') and the MLP output."""
    x, args = block_inputs(backbone, _images(backbone, 2))
    seen: list[torch.Tensor] = []

    def add(out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        seen[:] = inputs
        return out

    for i, block in enumerate(backbone.blocks):
        assert block_family(block) is not None
        got, want = run_block(block, x, add, **args[i]), block(x, **args[i])
        assert max_diff(got, want) == 0.0
        assert max_diff(seen[0] + seen[2], want) == 0.0
        assert max_diff(seen[1], block.norm2(seen[0])) == 0.0
        x = want
    assert max_diff(backbone.norm(x), backbone.forward_features(_images(backbone, 2))) == 0.0


@torch.no_grad()
@pytest.mark.parametrize("path", PATHS)
def test_engine_equals_adapted_model(backbone: nn.Module, task_models: dict[str, nn.Module], path: str) -> None:
    """A batch mixing every task (adapters of each kind of input, a linear probe): each row's logits equal the
    adapted model's on that row, and that row run alone with its task, within 1e-5."""
    names = ["t3", "t0", "t4", "t1", "t0", "t2", "t3", "t1"]
    x = _images(backbone, len(names))
    engine = _engine(backbone, task_models, path)
    alone = _engine(backbone, task_models, "slices")
    out = engine(x, names)
    for i, name in enumerate(names):
        want = task_models[name](x[i : i + 1])[0]
        assert out[i].shape == want.shape
        assert max_diff(out[i], want) <= 1e-5, (path, i, name)
        assert max_diff(out[i], alone(x[i : i + 1], name)[0]) <= 1e-5, (path, i, name)
    assert max(max_diff(a, b) for a, b in zip(engine(x, "t2"), task_models["t2"](x), strict=True)) <= 1e-5


@torch.no_grad()
def test_adapters_matter(backbone: nn.Module, task_models: dict[str, nn.Module]) -> None:
    """The trained-looking branches change the logits (the equalities above are not between plain backbones)."""
    x = _images(backbone, 2)
    model = task_models["t0"]
    plain = copy.deepcopy(model)
    af.remove_adapters(plain)
    assert max_diff(model(x), plain(x)) > 1e-3


@torch.no_grad()
def test_adapter_file_round_trip(
    family: str, backbone: nn.Module, task_models: dict[str, nn.Module], tmp_path: Path
) -> None:
    """An adapter file of an Eva or Beit task loads into the engine with the same logits; the fingerprint is that of
    the frozen weights (adapters and head excluded); another backbone's weights refuse the file."""
    path = af.save_adapter(task_models["t1"], tmp_path / "t1.safetensors", task="t1")
    task = af.load_adapter(path, backbone)
    assert task.info.fingerprint == af.backbone_fingerprint(backbone) == af.backbone_fingerprint(task_models["t1"])
    assert task.info.backbone == backbone.pretrained_cfg["architecture"]
    engine = af.MultiTaskViT(copy.deepcopy(backbone), path="gathered")
    engine.add_task("t1", path)
    x = _images(backbone, 3)
    got = torch.stack(engine(x, "t1"))
    assert max_diff(got, task_models["t1"](x)) <= 1e-5
    other = af.MultiTaskViT(_backbone(family, seed=5))
    with pytest.raises(af.IncompatibleAdapterError, match="fingerprint"):
        other.add_task("t1", path)


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators that launch work (views and aliases launch none)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view and func.overloadpacket not in (torch.ops.aten.detach_, torch.ops.aten.lift_fresh):
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _op_count(engine: af.MultiTaskViT, x: torch.Tensor, names: list[str]) -> int:
    engine(x, names)  # the bank writes new tasks on their first batch only
    with _CountOps() as counter:
        engine(x, names)
    return sum(counter.ops.values())


@pytest.mark.parametrize("family_name", ["eva02", "beit"])
def test_op_count_does_not_grow_with_tasks(family_name: str) -> None:
    """On the gathered path one forward of 32 rows mixing 16 tasks (same kind of branch input, other d^ and scales)
    dispatches exactly the operators of 2 tasks mixed, and at most a constant more than 1 task; the slice path
    grows with the tasks."""
    backbone = _backbone(family_name)
    models = {
        f"t{k}": adapted(backbone, af.AdapterConfig(bottleneck=2 + k, scale=0.1 + 0.01 * k), num_classes=3, seed=k)
        for k in range(16)
    }
    x = _images(backbone, 32)
    shuffled = torch.randperm(32, generator=torch.Generator().manual_seed(0)).tolist()  # rows to reorder
    engine = _engine(backbone, models, "gathered")
    one = _op_count(engine, x, ["t0"] * 32)
    two = _op_count(engine, x, [f"t{k % 2}" for k in shuffled])
    sixteen = _op_count(engine, x, [f"t{k % 16}" for k in shuffled])
    assert sixteen == two and sixteen <= one + 10, (one, two, sixteen)
    slices = _engine(backbone, models, "slices")
    assert _op_count(slices, x, [f"t{k % 16}" for k in shuffled]) > _op_count(slices, x, ["t0"] * 32) + 15 * 3


def test_clips_refused_with_a_reason(backbone: nn.Module, task_models: dict[str, nn.Module]) -> None:
    """An Eva or Beit takes images only: the library's clip rule, the backbone's spec and the engine's say so, and a
    clip batch is a clear ValueError."""
    assert "takes images only" in (clip_support(backbone) or "")
    assert BackboneSpec.of(backbone, "f").supports_clips is False
    engine = _engine(backbone, {"t0": task_models["t0"]}, "slices")
    assert engine.spec.supports_clips is False
    with pytest.raises(af.UnsupportedModelError, match="takes images only"):
        VideoViT(backbone, frames=2)
    size = backbone.patch_embed.img_size[0]
    with pytest.raises(ValueError, match="clips need a VisionTransformer"):
        engine(torch.zeros(1, 2, 3, size, size), "t0")


def test_load_backbone_with_local_weights(tmp_path: Path) -> None:
    """``--backbone eva02_tiny_patch14_224 --weights FILE`` (CLI and server): a locally saved random state dict is
    loaded without any download, with the model's own input spec; a file of another model is refused."""
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False)
    weights = tmp_path / "eva02_tiny.pth"
    torch.save(model.state_dict(), weights)
    loaded = load_backbone("eva02_tiny_patch14_224", weights)
    assert af.backbone_fingerprint(loaded.model) == af.backbone_fingerprint(model)
    assert loaded.spec.size == 224 and loaded.spec.mean == tuple(model.pretrained_cfg["mean"])
    assert block_family(loaded.model.blocks[0]) is not None and block_family(loaded.model.blocks[0]).name == "eva"
    with pytest.raises(af.AdaptformerError, match="do not fit"):
        load_backbone("beit_base_patch16_224", weights)


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (
            lambda: timm.create_model("naflexvit_base_patch16_gap", img_size=32, depth=1),
            ["naflexvit_base_patch16_gap", "NaFlexVit", "per-sample patch mask"],
        ),
        (
            lambda: timm.create_model("vit_relpos_base_patch16_224", img_size=32, depth=1),
            ["vit_relpos_base_patch16_224", "VisionTransformerRelPos", "relative position bias"],
        ),
        (
            lambda: timm.create_model("vit_base_patch16_rpn_224", img_size=32, depth=1),
            ["vit_base_patch16_rpn_224", "ResPostBlock", "pre-norm"],
        ),
        (
            lambda: timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1, use_post_norm=True),
            ["eva02_tiny_patch14_224", "EvaBlockPostNorm", "use_post_norm"],
        ),
    ],
    ids=["naflexvit", "relpos", "rpn", "eva-post-norm"],
)
def test_families_still_refused_say_why(build: Callable[[], nn.Module], names: list[str]) -> None:
    """Models outside the supported families get UnsupportedModelError naming the model, its class or block and
    the reason, from the library and the engine alike."""
    model = build()
    for action in (lambda: af.add_adapters(model), lambda: af.MultiTaskViT(model)):
        with pytest.raises(af.UnsupportedModelError) as err:
            action()
        for name in names:
            assert name in str(err.value)
