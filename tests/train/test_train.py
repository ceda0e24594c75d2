"""Training toolkit: training learns, seeds and resuming reproduce, every method trains what it should."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adaptformer.backbone import Backbone
from adaptformer.config import AdapterConfig
from adaptformer.data import LabeledData, Splits
from adaptformer.preprocess import InputSpec
from adaptformer.train import TrainConfig, build_model, evaluate, fit

SIZE = 16


def tiny_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=SIZE, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    return Backbone(vit.eval(), "tiny-vit", InputSpec(size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3))


def colour_data(n: int, seed: int, frames: int = 1) -> LabeledData:
    """Four classes on noise: a red, green or blue tint, or none (linearly separable, but noisy)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.5
    for i, c in enumerate(y.tolist()):
        if c < 3:
            x[i, c] += 0.8
    if frames > 1:  # the same picture in every frame, with noise of its own per frame (frames differ)
        x = x.unsqueeze(1).repeat(1, frames, 1, 1, 1) + 0.1 * torch.randn(n, frames, 3, SIZE, SIZE, generator=g)
    return LabeledData(x, y)


def toy_splits(frames: int = 1) -> Splits:
    return Splits(
        train=colour_data(256, 1, frames),
        val=colour_data(64, 2, frames),
        labels=["red", "green", "blue", "none"],
        modality="clip" if frames > 1 else "image",
        frames=frames,
        source="toy colours",
    )


def quick(method: str = "adaptformer", **kw: object) -> TrainConfig:
    base = dict(method=method, epochs=4, batch_size=32, lr=3e-3, warmup_epochs=0.5, device="cpu",
                adapter=AdapterConfig(bottleneck=8))  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_trained_only_trainable(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Every trainable tensor changed (each one: a part the optimizer skipped stays at its init); every frozen
    one is bit-for-bit what it was."""
    params = dict(model.named_parameters())
    assert set(params) == set(before)
    unchanged = [k for k, p in params.items() if p.requires_grad and torch.equal(p, before[k])]
    assert not unchanged, f"trainable but never updated: {unchanged}"
    changed = [k for k, p in params.items() if not p.requires_grad and not torch.equal(p, before[k])]
    assert not changed, f"frozen but changed: {changed}"
    assert any(p.requires_grad for p in params.values()) and any(not p.requires_grad for p in params.values())


def test_training_reduces_loss_and_beats_chance() -> None:
    splits = toy_splits()
    cfg = quick()
    model = build_model(tiny_backbone(), cfg, num_classes=4)
    before = evaluate(model, splits.val)
    weights = snapshot(model)
    result = fit(model, splits, cfg, progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["val_loss"] < before["loss"]
    assert result.metrics["val_top1"] > 0.5, result.metrics  # chance is 0.25
    assert_trained_only_trainable(model, weights)


def test_same_seed_same_result_other_seed_differs() -> None:
    splits = toy_splits()
    runs = []
    for seed in (0, 0, 1):
        cfg = quick(epochs=2, seed=seed)
        runs.append(fit(build_model(tiny_backbone(), cfg, 4), splits, cfg, progress=False))
    a, b, c = (dict(r.model.named_parameters()) for r in runs)
    trained = [k for k, v in a.items() if v.requires_grad]
    assert all(torch.equal(a[k], b[k]) for k in trained)
    assert not all(torch.equal(a[k], c[k]) for k in trained)


def test_resume_reaches_the_same_weights(tmp_path) -> None:
    splits = toy_splits()
    full_cfg = quick(epochs=3)
    straight = fit(build_model(tiny_backbone(), full_cfg, 4), splits, full_cfg, progress=False)

    ckpt = tmp_path / "run.ckpt"
    seen: list[dict] = []

    class Stop(Exception):
        pass

    def interrupt_in_second_epoch(record: dict) -> None:
        # on_epoch runs before that epoch's checkpoint is written: the checkpoint holds epoch 1.
        seen.append(record)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(build_model(tiny_backbone(), full_cfg, 4), splits, full_cfg, checkpoint=ckpt, progress=False,
            on_epoch=interrupt_in_second_epoch)  # fmt: skip
    assert [r["epoch"] for r in seen] == [1, 2]  # the run was interrupted, in its second epoch
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1  # what there is to resume: one epoch of three
    straight_params = dict(straight.model.named_parameters())
    assert any(not torch.equal(v, straight_params[k]) for k, v in state["params"].items())

    ran: list[int] = []
    resumed = fit(build_model(tiny_backbone(), full_cfg, 4), splits, full_cfg, checkpoint=ckpt, resume=True,
                  progress=False, on_epoch=lambda record: ran.append(record["epoch"]))  # fmt: skip
    assert ran == [2, 3]  # it went on from the checkpoint; starting over would run epoch 1 again
    a, b = straight_params, dict(resumed.model.named_parameters())
    for k, v in a.items():
        if v.requires_grad:
            assert torch.equal(v, b[k]), k
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == seen[0]  # epoch 1's record comes from the checkpoint


def test_each_method_trains_only_its_parameters() -> None:
    splits = toy_splits()
    expected = {"linear": ("head.",), "adaptformer": ("head.", ".adapter."), "vpt": ("head.", "prompts")}
    for method, allowed in expected.items():
        cfg = quick(method, epochs=1, prompt_tokens=2)
        model = build_model(tiny_backbone(), cfg, 4)
        before = snapshot(model)
        fit(model, splits, cfg, progress=False)
        for name, p in model.named_parameters():
            trainable = any(a in name for a in allowed)
            assert p.requires_grad == trainable, (method, name)
        assert_trained_only_trainable(model, before)
    cfg = quick("full", epochs=1)
    model = build_model(tiny_backbone(), cfg, 4)
    assert all(p.requires_grad for p in model.parameters())
    before = snapshot(model)
    fit(model, splits, cfg, progress=False)
    assert not [k for k, p in model.named_parameters() if torch.equal(p, before[k])]  # everything trained


def test_clip_training_runs_on_space_time_tokens() -> None:
    splits = toy_splits(frames=4)
    cfg = quick(epochs=3)
    model = build_model(tiny_backbone(), cfg, 4, frames=4)
    weights = snapshot(model)
    result = fit(model, splits, cfg, progress=False)
    assert result.metrics["val_top1"] > 0.5
    assert_trained_only_trainable(model, weights)  # the clip's own parts train too; the backbone does not


def test_augment_and_loss_hooks_are_seeded_per_epoch() -> None:
    """The pretraining script's augmentation and loss run inside fit: every training batch is augmented with the
    epoch's seeded generator (a rerun augments alike), and the loss given is the one minimised."""
    import functools

    import torch.nn.functional as F

    splits = toy_splits()
    cfg = quick(method="full", epochs=2)
    runs = []
    for _ in range(2):
        seen: list[int] = []

        def jitter(x: torch.Tensor, g: torch.Generator, seen: list[int] = seen) -> torch.Tensor:
            seen.append(len(x))
            return x + 0.1 * torch.randn(x.shape, generator=g)

        loss = functools.partial(F.cross_entropy, label_smoothing=0.1)
        runs.append(
            fit(build_model(tiny_backbone(), cfg, 4), splits, cfg, progress=False, augment=jitter, loss_fn=loss)
        )
        assert sum(seen) == 2 * len(splits.train)  # every training sample, every epoch; never the validation split
    a, b = (dict(r.model.named_parameters()) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = fit(build_model(tiny_backbone(), cfg, 4), splits, cfg, progress=False)
    assert not all(torch.equal(a[k], v) for k, v in plain.model.named_parameters())
