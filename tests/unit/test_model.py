"""Injection into timm ViTs: identity at init, the block formula, init, freezing, parameter count, refusals."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock

import adaptformer as af
from tests.support import adapted, images, make_vit, max_diff, randomize_adapters, reference_block

IDENTITY_KINDS = [
    "vit_tiny",
    "vit_small",
    "deit_small",
    "no-class-token",
    "layer-scale",
    "registers",
    "tiny-custom",
]

CONFIGS = {
    "parallel-ln": af.AdapterConfig(bottleneck=16),
    "parallel-raw": af.AdapterConfig(bottleneck=16, adapter_input="raw"),
    "parallel-own_ln": af.AdapterConfig(bottleneck=16, adapter_input="own_ln"),
    "sequential-ln": af.AdapterConfig(bottleneck=16, mode="sequential"),
    "sequential-raw": af.AdapterConfig(bottleneck=16, mode="sequential", adapter_input="raw"),
    "sequential-own_ln": af.AdapterConfig(bottleneck=16, mode="sequential", adapter_input="own_ln"),
    "learnable-scale": af.AdapterConfig(bottleneck=16, learnable_scale=True, scale=0.7),
}


@pytest.mark.parametrize("kind", IDENTITY_KINDS)
@torch.no_grad()
def test_fresh_adapters_change_nothing(kind: str) -> None:
    """A freshly added adapter (zero up projection) leaves the backbone's logits unchanged."""
    model = make_vit(kind)
    x = images(2)
    before = model(x)
    af.add_adapters(model, af.AdapterConfig(bottleneck=8))
    assert all(isinstance(b, af.AdaptedBlock) for b in model.blocks)
    assert max_diff(model(x), before) <= 1e-6


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
@torch.no_grad()
def test_fresh_adapters_change_nothing_any_config(config: af.AdapterConfig) -> None:
    """The same for every mode, adapter input and scale setting (layer-scale model)."""
    model = make_vit("layer-scale")
    x = images(2)
    before = model(x)
    af.add_adapters(model, config)
    assert max_diff(model(x), before) <= 1e-6


@torch.no_grad()
def test_fresh_adapters_change_nothing_vit_b16(vit_base: torch.nn.Module) -> None:
    """The same on a full-size ViT-B/16 at 224 px."""
    model = copy.deepcopy(vit_base)
    x = images(1, size=224)
    before = model(x)
    af.add_adapters(model, af.AdapterConfig())
    assert max_diff(model(x), before) <= 1e-6


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("kind", ["tiny-custom", "layer-scale"])
@torch.no_grad()
def test_block_matches_design_formula(kind: str, config: af.AdapterConfig) -> None:
    """With non-zero adapter weights, an adapted block computes DESIGN.md's formula from its own submodules."""
    model = adapted(make_vit(kind), config)
    tokens = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(3))
    for block in model.blocks:
        assert block.adapter.up.weight.abs().sum() > 0  # the branch really contributes
        expected = reference_block(block, tokens, block.adapter, config)
        assert max_diff(block(tokens), expected) <= 1e-5
        assert max_diff(block(tokens), block.block(tokens)) > 1e-3


@torch.no_grad()
def test_branch_only_in_chosen_layers() -> None:
    """Only the configured blocks are wrapped; the model output still equals the blocks applied in turn."""
    model = adapted(make_vit(), af.AdapterConfig(bottleneck=4, layers=[0, -1]))
    assert [i for i, b in enumerate(model.blocks) if isinstance(b, af.AdaptedBlock)] == [0, 3]
    x = images(2)
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for block in model.blocks:
        tokens = block(tokens)
    assert max_diff(model.forward_head(model.norm(tokens)), model(x)) <= 1e-6


def test_init_kaiming_down_zero_up() -> None:
    """W_down is Kaiming-normal (std ~ sqrt(2/dim), non-zero); W_up and both biases start at zero."""
    dim = 768
    adapter = af.AdaptMLP(dim, af.AdapterConfig(bottleneck=64))
    w = adapter.down.weight
    assert w.shape == (64, dim)
    assert abs(w.mean().item()) < 0.01
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / dim), rel=0.05)
    for t in (adapter.up.weight, adapter.up.bias, adapter.down.bias):
        assert torch.count_nonzero(t) == 0


def test_only_adapters_and_head_train_and_frozen_weights_stay_bit_exact() -> None:
    """After AdamW steps (weight decay on every parameter) the frozen tensors are bit-for-bit unchanged."""
    model = af.add_adapters(make_vit(), af.AdapterConfig(bottleneck=8, learnable_scale=True), num_classes=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") or ".adapter." in n for n in trainable)
    assert any(n.endswith(".adapter.scale") for n in trainable)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k not in trainable}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}

    model.train()
    # Deliberately hand every parameter to the optimizer: freezing must hold even then.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = images(8), torch.arange(8) % 4
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    params = dict(model.named_parameters())
    changed = {n for n in trainable if not torch.equal(params[n], start[n])}
    assert changed == trainable


def test_vit_b16_trainable_under_two_percent(vit_base: torch.nn.Module) -> None:
    """ViT-B/16 with d^=64 in all 12 blocks and a 100-class head trains < 2% of the backbone's parameters."""
    model = copy.deepcopy(vit_base)  # timm.create_model("vit_base_patch16_224", num_classes=0)
    af.add_adapters(model, af.AdapterConfig(bottleneck=64), num_classes=100)
    report = af.trainable_parameters(model)
    print(f"\nViT-B/16, d^=64 x 12, 100 classes: {report}")
    assert report.adapters == 12 * (768 * 64 + 64 + 64 * 768 + 768)  # ~1.19M
    assert report.head == 768 * 100 + 100
    assert report.trainable == report.adapters + report.head
    assert 85_000_000 < report.backbone < 87_000_000
    assert report.percent_of_backbone < 2.0


def test_remove_adapters_gives_back_backbone() -> None:
    """remove_adapters unwraps every block; the model computes the plain backbone again."""
    base = make_vit()
    model = adapted(base, num_classes=None)
    x = images(2)
    with torch.no_grad():
        assert max_diff(model(x), base(x)) > 1e-4
        af.remove_adapters(model)
        assert not any(isinstance(b, af.AdaptedBlock) for b in model.blocks)
        assert max_diff(model(x), base(x)) <= 1e-6


def test_adding_twice_refused() -> None:
    """Adding adapters to an adapted model is refused instead of stacking branches."""
    model = af.add_adapters(make_vit())
    with pytest.raises(ValueError, match="already has adapters"):
        af.add_adapters(model)


def test_fingerprint_ignores_adapters_and_head() -> None:
    """The fingerprint depends on the frozen weights only: adapters and a new head keep it, other weights don't."""
    base = make_vit()
    fp = af.backbone_fingerprint(base)
    assert af.backbone_fingerprint(adapted(base, num_classes=7)) == fp
    assert af.backbone_fingerprint(make_vit(seed=1)) != fp


def test_linear_probe_trains_head_only() -> None:
    """linear_probe: a new head, nothing else trainable, no adapters."""
    model = af.linear_probe(make_vit(), 6)
    assert model.head.out_features == 6
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (lambda: make_vit(block_fn=ResPostBlock), ["ResPostBlock"]),
        (lambda: make_vit(block_fn=ParallelScalingBlock), ["ParallelScalingBlock"]),
        (
            lambda: timm.create_model("vit_base_patch16_rpn_224", img_size=32, depth=2),
            ["vit_base_patch16_rpn_224", "ResPostBlock"],
        ),
        (lambda: timm.create_model("resnet18"), ["resnet18"]),
    ],
    ids=["ResPostBlock", "ParallelScalingBlock", "vit_rpn", "resnet18"],
)
def test_unsupported_models_refused(build: object, names: list[str]) -> None:
    """Models whose blocks cannot take a parallel branch get UnsupportedModelError naming the model/block."""
    model = build()  # type: ignore[operator]
    for action in (lambda: af.add_adapters(model), lambda: af.MultiTaskViT(model)):
        with pytest.raises(af.UnsupportedModelError) as err:
            action()
        for name in names:
            assert name in str(err.value)


def test_hand_built_vit_can_be_saved(tmp_path: object) -> None:
    """A VisionTransformer constructed directly (no timm registry) can be adapted and saved."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=3)
    model = randomize_adapters(af.add_adapters(vit, af.AdapterConfig(bottleneck=4)))
    af.save_adapter(copy.deepcopy(model), tmp_path / "hand.safetensors", task="hand")  # type: ignore[operator]
