"""VideoMAE checkpoints (the original layout and Hugging Face's) as the project's video backbone.

The reference is Hugging Face's own ``VideoMAEModel``, built tiny and random from a config (no download); the
original layout is made here by renaming its tensors to the original key names, independently of the loader.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers  # the dev extra
from safetensors.torch import save_file
from torch import nn

import adaptformer as af
from adaptformer.adapter_header import read_header
from adaptformer.backbone import load_backbone
from adaptformer.errors import AdaptformerError
from adaptformer.temporal import TemporalConfig
from adaptformer.train import TrainConfig
from adaptformer.video import VideoViT
from adaptformer.videomae import TubeletProjection, load_videomae
from tests.support import adapted, max_diff

FRAMES, SIZE, HEADS = 4, 32, 4
TOL = 2e-5


def _config(**kw: object) -> transformers.VideoMAEConfig:
    base = dict(
        image_size=SIZE, patch_size=16, num_channels=3, num_frames=FRAMES, tubelet_size=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64, num_labels=3,
    )  # fmt: skip
    return transformers.VideoMAEConfig(**{**base, **kw})


@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every tensor non-trivial (biases, q/v biases and norms included), so each one's mapping matters."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = 0.3 * torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)
    return model.eval()


def _clips(n: int = 3, frames: int = FRAMES, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _to_original(hf: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face's VideoMAE tensor names to the original repository's (written here, apart from the loader)."""
    out: dict[str, torch.Tensor] = {}
    for full, t in hf.items():
        key = full.removeprefix("videomae.")
        if key.startswith("embeddings.patch_embeddings.projection."):
            out[prefix + "patch_embed.proj." + key.rsplit(".", 1)[1]] = t
        elif key.startswith("encoder.layer."):
            i, rest = key.removeprefix("encoder.layer.").split(".", 1)
            block = f"{prefix}blocks.{i}."
            names = {
                "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
                "layernorm_before.weight": "norm1.weight", "layernorm_before.bias": "norm1.bias",
                "layernorm_after.weight": "norm2.weight", "layernorm_after.bias": "norm2.bias",
                "intermediate.dense.weight": "mlp.fc1.weight", "intermediate.dense.bias": "mlp.fc1.bias",
                "output.dense.weight": "mlp.fc2.weight", "output.dense.bias": "mlp.fc2.bias",
                "attention.attention.query.bias": "attn.q_bias", "attention.attention.value.bias": "attn.v_bias",
            }  # fmt: skip
            if rest in names:
                out[block + names[rest]] = t
            elif rest == "attention.attention.query.weight":
                qkv = [hf[full.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
                out[block + "attn.qkv.weight"] = torch.cat(qkv)
        elif key.startswith("layernorm."):
            out[prefix + "norm." + key.split(".", 1)[1]] = t
        elif key.startswith("fc_norm."):
            out[key] = t
    return out


@pytest.fixture(scope="module")
def hf_classifier() -> nn.Module:
    """Hugging Face's VideoMAEForVideoClassification: mean pooling, then fc_norm (eps 1e-12 in the blocks)."""
    torch.manual_seed(0)
    return _randomize(transformers.VideoMAEForVideoClassification(_config()))


@pytest.fixture(scope="module")
def hf_folder(hf_classifier: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videomae") / "hf"
    hf_classifier.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbone(hf_folder: Path) -> af.Backbone:
    return load_backbone("videomae", hf_folder)


@torch.no_grad()
def _features(vit: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The project's last hidden state (before the final norm) and pooled features of clips ``x``."""
    video = VideoViT(vit, frames=x.shape[1], tubelet=2)
    tokens = vit.blocks(video.embed(x))
    return tokens, video.forward_head(video.forward_features(x), pre_logits=True)


def test_hugging_face_folder_equals_the_reference(hf_classifier: nn.Module, backbone: af.Backbone) -> None:
    """A saved VideoMAEForVideoClassification folder (q_bias/v_bias, config.json): the same tokens and features."""
    x = _clips()
    with torch.no_grad():
        ref = hf_classifier.videomae(x).last_hidden_state
        pooled = hf_classifier.fc_norm(ref.mean(1))
    tokens, features = _features(backbone.model, x)
    assert tokens.shape == ref.shape == (3, FRAMES // 2 * 4, 32)
    assert max_diff(tokens, ref) <= TOL
    assert max_diff(features, pooled) <= TOL
    assert isinstance(backbone.model.patch_embed.proj, TubeletProjection)
    assert backbone.model.pos_embed is not None and "pos_embed" not in dict(backbone.model.named_parameters())
    assert (backbone.spec.size, backbone.spec.mean, backbone.spec.std) == (
        SIZE,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )


def test_hugging_face_file_with_final_layernorm(tmp_path: Path) -> None:
    """A lone VideoMAEModel weights file (Linear q/v biases, use_mean_pooling off: a final layernorm), heads given."""
    torch.manual_seed(1)
    model = _randomize(transformers.VideoMAEModel(_config(use_mean_pooling=False)), seed=1)
    path = tmp_path / "videomae.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    vit = load_videomae(path, num_heads=HEADS, img_size=SIZE)
    x = _clips()
    with torch.no_grad():
        ref = model(x).last_hidden_state  # after the final layernorm
    video = VideoViT(vit, frames=FRAMES, tubelet=2)
    with torch.no_grad():
        assert max_diff(video.forward_features(x), ref) <= TOL
        assert max_diff(video.forward_head(video.forward_features(x), pre_logits=True), ref.mean(1)) <= TOL


@pytest.mark.parametrize("prefix", ["encoder.", ""])
def test_original_layout_equals_the_reference(prefix: str, tmp_path: Path) -> None:
    """The original layout: the pre-training encoder (``encoder.``, its norm, decoder tensors beside it) and the
    fine-tuned model (no prefix, fc_norm, a head), as a torch file, LayerNorm eps 1e-6."""
    torch.manual_seed(2)
    pretraining = prefix == "encoder."
    hf = _randomize(
        transformers.VideoMAEForVideoClassification(_config(layer_norm_eps=1e-6, use_mean_pooling=not pretraining)), 2
    )
    state = _to_original(hf.state_dict(), prefix)
    assert "encoder.layer.0.attention.attention.query.weight" not in state
    if pretraining:
        state.update({"decoder.blocks.0.mlp.fc1.weight": torch.ones(2, 2), "mask_token": torch.zeros(1, 1, 8)})
    else:
        state.update({"head.weight": torch.ones(3, 32), "head.bias": torch.zeros(3)})
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 3}, path)
    vit = load_videomae(path, num_heads=HEADS, img_size=SIZE)
    x = _clips()
    with torch.no_grad():
        ref = hf.videomae(x).last_hidden_state
    tokens, features = _features(vit, x)
    if pretraining:
        with torch.no_grad():  # the encoder's norm is its last step: the reference is after it
            assert max_diff(vit.norm(tokens), ref) <= TOL
        assert max_diff(features, ref.mean(1)) <= TOL
    else:
        assert max_diff(tokens, ref) <= TOL
        pooled = F.layer_norm(ref.mean(1), (32,), hf.fc_norm.weight, hf.fc_norm.bias, eps=1e-6)
        assert max_diff(features, pooled) <= TOL


def test_table_rebuilt_for_the_served_frames(hf_classifier: nn.Module, backbone: af.Backbone) -> None:
    """Clips of 8 frames on a 4-frame checkpoint: the reference built for 8 frames with the same weights."""
    ref_model = transformers.VideoMAEModel(_config(num_frames=8)).eval()
    ref_model.load_state_dict(hf_classifier.videomae.state_dict())
    x = _clips(2, frames=8)
    with torch.no_grad():
        ref = ref_model(x).last_hidden_state
    tokens, _ = _features(backbone.model, x)
    assert tokens.shape[1] == 8 // 2 * 4
    assert max_diff(tokens, ref) <= TOL


def test_still_image_is_one_tubelet(backbone: af.Backbone) -> None:
    """An image through the backbone's image path embeds like a clip of one tubelet (two copies of it)."""
    img = _clips(2)[:, 0]
    vit = backbone.model
    with torch.no_grad():
        image = vit.forward_head(vit.forward_features(img), pre_logits=True)
        _, clip = _features(vit, img.unsqueeze(1).expand(-1, 2, -1, -1, -1))
    assert max_diff(image, clip) <= TOL


def test_other_tubelets_refused(backbone: af.Backbone) -> None:
    with pytest.raises(ValueError, match="tubelet kernel spans 2 frames"):
        VideoViT(backbone.model, frames=4, tubelet=1)


def test_fresh_adapters_change_nothing(backbone: af.Backbone) -> None:
    """AdaptFormer branches in every block and the default temporal part, fresh: the features exactly unchanged."""
    x = _clips()
    _, plain = _features(backbone.model, x)
    video = af.video_vit(copy.deepcopy(backbone.model), FRAMES, 2, temporal=TemporalConfig())
    model = af.add_adapters(video, af.AdapterConfig(bottleneck=8), num_classes=3).eval()
    with torch.no_grad():
        adapted_features = model.forward_head(model.forward_features(x), pre_logits=True)
    assert max_diff(adapted_features, plain) == 0.0


def _clip_task(vit: nn.Module, seed: int, bottleneck: int, classes: int) -> nn.Module:
    """A video model with random non-zero branches, head and temporal part (difference kernel, time embedding)."""
    torch.manual_seed(seed)
    video = af.video_vit(vit, FRAMES, 2, temporal=TemporalConfig(diff=True, time=True))
    model = adapted(video, af.AdapterConfig(bottleneck=bottleneck), num_classes=classes, seed=seed)
    with torch.no_grad():
        for p in model.temporal.parameters():
            p.normal_(0, 0.05)
    return model


def test_engine_serves_clip_tasks_mixed_and_alone(backbone: af.Backbone, tmp_path: Path) -> None:
    """One and three clip tasks, through adapter files: each row equals its own model and its task alone; the
    files carry the backbone's fingerprint and load back."""
    vit = backbone.model
    models = {name: _clip_task(vit, seed, 4 * (seed + 1), 3 + seed) for seed, name in enumerate("abc")}
    fingerprint = af.backbone_fingerprint(vit)
    engine = af.MultiTaskViT(copy.deepcopy(vit), fingerprint=fingerprint)
    for name, model in models.items():
        path = af.save_adapter(model, tmp_path / f"{name}.safetensors", task=name, backbone_name="videomae")
        assert read_header(path).metadata.backbone_fingerprint == fingerprint
        task = engine.add_task(name, path)
        assert task.info.input.modality == "clip" and task.info.input.frames == FRAMES
    x = _clips(6, seed=9)
    with torch.no_grad():
        alone = engine(x[:2], "a")
        for i in range(2):
            assert max_diff(alone[i], models["a"](x[i : i + 1])[0]) <= TOL
        rows = ["a", "b", "c", "c", "a", "b"]
        mixed = engine(x, rows)
        for i, name in enumerate(rows):
            assert mixed[i].shape == (3 + "abc".index(name),)
            assert max_diff(mixed[i], models[name](x[i : i + 1])[0]) <= TOL
            assert max_diff(mixed[i], engine(x[i : i + 1], name)[0]) <= TOL


def test_fingerprint_covers_the_tubelet_kernel(backbone: af.Backbone) -> None:
    other = copy.deepcopy(backbone.model)
    with torch.no_grad():
        other.patch_embed.proj.weight[:, :, 1] += 0.01  # the second frame of the kernel only
    assert af.backbone_fingerprint(other) != af.backbone_fingerprint(backbone.model)


def test_bad_checkpoints_refused(tmp_path: Path, hf_classifier: nn.Module) -> None:
    with pytest.raises(AdaptformerError, match="--weights"):
        load_backbone("videomae-base")
    vit_file = tmp_path / "vit.safetensors"
    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, str(vit_file))
    with pytest.raises(AdaptformerError, match="not a VideoMAE checkpoint"):
        load_backbone("videomae-base", vit_file)
    state = {k: v.contiguous() for k, v in hf_classifier.state_dict().items()}
    missing = dict(state)
    missing.pop("videomae.encoder.layer.1.output.dense.weight")
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(AdaptformerError, match=r"output\.dense\.weight' is missing"):
        load_videomae(tmp_path / "missing.safetensors", num_heads=HEADS)
    stray = {**state, "videomae.extra.weight": torch.zeros(2)}
    save_file(stray, str(tmp_path / "stray.safetensors"))
    with pytest.raises(AdaptformerError, match="unexpected tensors"):
        load_videomae(tmp_path / "stray.safetensors", num_heads=HEADS)
    save_file(state, str(tmp_path / "ok.safetensors"))
    assert load_videomae(tmp_path / "ok.safetensors", num_heads=HEADS, img_size=SIZE).embed_dim == 32
    with pytest.raises(AdaptformerError, match="attention heads"):  # width 32: no size of VideoMAE's
        load_videomae(tmp_path / "ok.safetensors", name="videomae")
    with pytest.raises(AdaptformerError, match="not found"):
        load_backbone("videomae", tmp_path / "nowhere")


def test_cli_trains_and_evaluates_a_clip_task_on_it(hf_folder: Path, tmp_path: Path) -> None:
    """``adaptformer train/eval --backbone videomae --weights FOLDER``: a clip adapter on the VideoMAE fingerprint."""
    from adaptformer.cli import main

    out = tmp_path / "motion.safetensors"
    common = ["--data", "motion", "--backbone", "videomae", "--weights", str(hf_folder), "--frames", str(FRAMES)]
    main(["train", "--task", "motion", *common, "--epochs", "1", "--limit", "16", "--quiet", "--out", str(out)])
    header = read_header(out)
    vit = load_backbone("videomae", hf_folder).model
    assert header.metadata.backbone == "videomae"
    assert header.metadata.backbone_fingerprint == af.backbone_fingerprint(vit)
    spec = header.metadata.input
    assert (spec.modality, spec.frames, spec.tubelet, spec.size) == ("clip", FRAMES, 2, SIZE)
    # the default temporal part on a video-pretrained backbone is none: its own tubelet kernel sees motion
    assert str(TemporalConfig.from_dict(header.metadata.temporal or {})) == "none"
    main(["eval", "--adapter", str(out), *common, "--limit", "8"])


def test_auto_temporal_part_is_none_on_a_video_backbone(backbone: af.Backbone) -> None:
    """``temporal=auto``: none on VideoMAE (and for a linear probe), ``low`` on an image ViT inflated over time."""
    assert str(TrainConfig().temporal_config(backbone.model)) == "none"
    assert str(TrainConfig().temporal_config(load_backbone().model)) == "low"
    assert str(TrainConfig(method="linear").temporal_config(load_backbone().model)) == "none"
    assert str(TrainConfig(temporal="low+proj").temporal_config(backbone.model)) == "low+proj"


def test_server_loads_a_model_folder(hf_folder: Path) -> None:
    """The server's backbone setting takes the folder (not only a file) and serves clips with the tubelet kernel."""
    from adaptformer_server.backbone import build_engine
    from adaptformer_server.settings import Settings

    engine, info = build_engine(Settings(backbone="videomae", weights=hf_folder, device="cpu", dtype="float32"))
    assert info.name == "videomae" and info.supports_clips and info.img_size == SIZE
    assert info.fingerprint == af.backbone_fingerprint(load_backbone("videomae", hf_folder).model)
    with pytest.raises(ValueError, match="tubelet"):
        engine.video(FRAMES, 1)


def _reference_original(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """The original fine-tuned VideoMAE forward (layer scale, mean pooling, fc_norm) in plain torch ops, apart from
    timm and the loader: the pooled features of clips ``x``."""
    w = state["patch_embed.proj.weight"]
    t = F.conv3d(x.transpose(1, 2), w, state["patch_embed.proj.bias"], stride=w.shape[2:])
    t = t.flatten(2).transpose(1, 2)
    n, d = t.shape[1], t.shape[2]
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(d)
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).double() / d)
    t = t + torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)).float()
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        s = lambda name, i=i: state[f"blocks.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(t, (d,), s("norm1.weight"), s("norm1.bias"), eps)
        bias = torch.cat([s("attn.q_bias"), torch.zeros(d), s("attn.v_bias")])
        q, k, v = (
            F.linear(h, s("attn.qkv.weight"), bias).reshape(len(t), n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        )
        a = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (a @ v).transpose(1, 2).reshape(len(t), n, d)
        t = t + s("gamma_1") * F.linear(out, s("attn.proj.weight"), s("attn.proj.bias"))
        h = F.layer_norm(t, (d,), s("norm2.weight"), s("norm2.bias"), eps)
        h = F.linear(
            F.gelu(F.linear(h, s("mlp.fc1.weight"), s("mlp.fc1.bias"))), s("mlp.fc2.weight"), s("mlp.fc2.bias")
        )
        t = t + s("gamma_2") * h
    return F.layer_norm(t.mean(1), (d,), state["fc_norm.weight"], state["fc_norm.bias"], eps)


def test_original_layout_with_layer_scale(tmp_path: Path) -> None:
    """An original checkpoint with layer scale (``gamma_1``/``gamma_2``) against the forward written out above."""
    hf = _randomize(transformers.VideoMAEForVideoClassification(_config(layer_norm_eps=1e-6)), 3)
    state = _to_original(hf.state_dict(), "")
    gen = torch.Generator().manual_seed(4)
    for i in range(2):
        for g in ("gamma_1", "gamma_2"):
            state[f"blocks.{i}.{g}"] = 0.5 + torch.rand(32, generator=gen)
    path = tmp_path / "layer_scale.pth"
    torch.save({"model": state}, path)
    vit = load_videomae(path, num_heads=HEADS, img_size=SIZE)
    x = _clips()
    _, features = _features(vit, x)
    with torch.no_grad():
        ref = _reference_original(state, x, HEADS, 1e-6)
    assert max_diff(features, ref) <= TOL
    without = {k: v for k, v in state.items() if "gamma" not in k}
    torch.save({"model": without}, path)
    _, plain = _features(load_videomae(path, num_heads=HEADS, img_size=SIZE), x)
    assert max_diff(plain, features) > 1e-3  # the layer scale is applied, not dropped


def test_learned_position_embedding_refused(tmp_path: Path, hf_classifier: nn.Module) -> None:
    """A fine-tuned checkpoint that learned its positions cannot be served at other frame counts: refused; one that
    saved the fixed table loads."""
    from adaptformer.videomae import sinusoid_table

    state = _to_original(hf_classifier.state_dict(), "")
    path = tmp_path / "positions.pth"
    torch.save({"model": {**state, "pos_embed": sinusoid_table(8, 32).unsqueeze(0)}}, path)
    assert load_videomae(path, num_heads=HEADS, img_size=SIZE).embed_dim == 32
    torch.save({"model": {**state, "pos_embed": torch.randn(1, 8, 32)}}, path)
    with pytest.raises(AdaptformerError, match="learned position embedding"):
        load_videomae(path, num_heads=HEADS, img_size=SIZE)
