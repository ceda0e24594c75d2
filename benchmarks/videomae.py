"""VideoMAE as the video backbone: loading fidelity, the video engine's cost, and a clip task's parameter share.

    python -m benchmarks.videomae [--quick] [--batch 16] [--reps 5] [--threads 1] [--out docs/benchmarks/videomae.md]

1. Fidelity: tiny random Hugging Face VideoMAE models (``transformers``, built from a config, nothing downloaded),
   saved in both checkpoint layouts (the original one by renaming the tensors), loaded through
   ``adaptformer.videomae``; the max abs difference of the last hidden state and of the pooled features.
2. Throughput at ViT-S size (width 384, 12 blocks, 6 heads, 224 px, 8 frames: 4 x 196 tokens per clip), random
   weights, CPU, one torch thread, this process's CPU clock: the plain video model (``VideoViT`` pooled features)
   against the engine with 1 task for the whole batch and with 16 different tasks (one clip each), every task with
   d^=64 branches in all 12 blocks, a head and today's default temporal part (``diff``). Interleaved (plain, 1 task,
   16 tasks, plain, ...); medians, and the median of the paired ratios plain / engine.
3. The parameter share of a d^=64 clip task on VideoMAE ViT-B (branches in all 12 blocks, a 174-class head, as for
   Something-Something v2), with and without the default temporal part.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from torch import nn

import adaptformer as af
from adaptformer.backbone import load_backbone
from adaptformer.temporal import TemporalConfig, TemporalPart
from adaptformer.video import VideoViT
from adaptformer.videomae import load_videomae, videomae_from_state
from benchmarks.machine import finish, header, report_head

TINY = dict(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, num_labels=3)  # fmt: skip
SMALL = dict(image_size=224, patch_size=16, tubelet_size=2, hidden_size=384, num_hidden_layers=12,
             num_attention_heads=6, intermediate_size=1536)  # fmt: skip
BASE = dict(image_size=224, patch_size=16, tubelet_size=2, hidden_size=768, num_hidden_layers=12,
            num_attention_heads=12, intermediate_size=3072)  # fmt: skip


@torch.no_grad()
def _randomize(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = 0.3 * torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)
    return model.eval()


def _original(hf: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face's tensor names to the original VideoMAE repository's."""
    blocks = {"attention.output.dense": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
              "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for full, t in hf.items():
        key = full.removeprefix("videomae.")
        if key.startswith("embeddings.patch_embeddings.projection."):
            out[f"{prefix}patch_embed.proj.{key.rsplit('.', 1)[1]}"] = t
        elif key.startswith("encoder.layer."):
            i, rest = key.removeprefix("encoder.layer.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            b = f"{prefix}blocks.{i}."
            if module in blocks:
                out[f"{b}{blocks[module]}.{kind}"] = t
            elif rest == "attention.attention.query.bias":
                out[f"{b}attn.q_bias"] = t
            elif rest == "attention.attention.value.bias":
                out[f"{b}attn.v_bias"] = t
            elif rest == "attention.attention.query.weight":
                out[f"{b}attn.qkv.weight"] = torch.cat(
                    [hf[full.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
                )
        elif key.startswith("layernorm."):
            out[f"{prefix}norm.{key.split('.', 1)[1]}"] = t
        elif key.startswith("fc_norm."):
            out[key] = t
    return out


@torch.no_grad()
def _diffs(vit: nn.Module, x: torch.Tensor, tokens_ref: torch.Tensor, pooled_ref: torch.Tensor) -> dict[str, float]:
    video = VideoViT(vit, frames=x.shape[1], tubelet=2)
    tokens = video.forward_features(x)
    pooled = video.forward_head(tokens, pre_logits=True)
    return {"tokens": (tokens - tokens_ref).abs().max().item(), "pooled": (pooled - pooled_ref).abs().max().item()}


@torch.no_grad()
def fidelity(folder: Path) -> dict[str, dict[str, float]]:
    """Max abs differences against the reference for each layout."""
    x = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    out: dict[str, dict[str, float]] = {}
    torch.manual_seed(0)
    clf = _randomize(transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(**TINY)), 0)
    clf.save_pretrained(folder / "hf")
    ref = clf.videomae(x).last_hidden_state
    out["hugging_face_folder (q_bias/v_bias, fc_norm eps 1e-5)"] = _diffs(
        load_backbone("videomae", folder / "hf").model, x, ref, clf.fc_norm(ref.mean(1))
    )
    base = _randomize(transformers.VideoMAEModel(transformers.VideoMAEConfig(**TINY, use_mean_pooling=False)), 1)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(folder / "hf.safetensors"))
    ref = base(x).last_hidden_state
    out["hugging_face_file (query/value Linear biases, final layernorm)"] = _diffs(
        load_videomae(folder / "hf.safetensors", num_heads=4, img_size=32), x, ref, ref.mean(1)
    )
    for prefix, pooling in (("encoder.", False), ("", True)):
        config = transformers.VideoMAEConfig(**TINY, layer_norm_eps=1e-6, use_mean_pooling=pooling)
        hf = _randomize(transformers.VideoMAEForVideoClassification(config), 2)
        path = folder / f"original{prefix or '_finetuned'}.pth"
        torch.save({"model": _original(hf.state_dict(), prefix)}, path)
        ref = hf.videomae(x).last_hidden_state
        pooled = (
            F.layer_norm(ref.mean(1), (32,), hf.fc_norm.weight, hf.fc_norm.bias, eps=1e-6) if pooling else ref.mean(1)
        )
        name = "original_pretraining (encoder. prefix, norm)" if prefix else "original_finetuned (fc_norm)"
        out[name] = _diffs(load_videomae(path, num_heads=4, img_size=32), x, ref, pooled)
    return out


def _vit(size: dict, frames: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.VideoMAEConfig(**size, num_frames=frames)
    state = transformers.VideoMAEModel(config).state_dict()
    return videomae_from_state(state, config.to_dict(), "videomae")


@torch.no_grad()
def _task(name: str, vit: nn.Module, fingerprint: str, frames: int, seed: int, diff: bool = True) -> af.TaskAdapter:
    """A clip task: random non-zero d^=64 branches in every block, a 10-class head, a random ``diff`` kernel
    (``diff=False``: no temporal part)."""
    gen = torch.Generator().manual_seed(seed)
    config = af.AdapterConfig(bottleneck=64)
    adapters = {}
    for i in range(len(vit.blocks)):
        adapter = af.AdaptMLP(vit.embed_dim, config)
        for p in (adapter.up.weight, adapter.up.bias, adapter.down.bias):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        adapters[i] = adapter
    proj = vit.patch_embed.proj
    temporal = TemporalPart(TemporalConfig(), vit.embed_dim, proj.kernel_size, proj.in_channels, 2, frames // 2)
    assert temporal.diff is not None
    temporal.diff.copy_(0.01 * torch.randn(temporal.diff.shape, generator=gen))
    spec = af.spec_from_model(vit).as_clip(frames, 2)
    info = af.TaskInfo(
        task=name, labels=[str(i) for i in range(10)], backbone="videomae", fingerprint=fingerprint, input=spec
    )
    return af.TaskAdapter(info, nn.Linear(vit.num_features, 10), config, adapters, temporal if diff else None)


@torch.no_grad()
def throughput(batch: int, reps: int, frames: int) -> dict:
    vit = _vit(SMALL, frames)
    fingerprint = af.backbone_fingerprint(vit)
    engine = af.MultiTaskViT(vit, fingerprint=fingerprint)
    for k in range(16):
        engine.add_task(f"t{k}", _task(f"t{k}", vit, fingerprint, frames, k))
        engine.add_task(f"n{k}", _task(f"n{k}", vit, fingerprint, frames, k, diff=False))
    plain = VideoViT(engine.vit, frames=frames, tubelet=2)
    x = torch.randn(batch, frames, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    one = ["t0"] * batch
    mixed = [f"t{i % 16}" for i in range(batch)]
    no_temporal = [f"n{i % 16}" for i in range(batch)]
    runs = {
        "plain": lambda: plain.forward_head(plain.forward_features(x), pre_logits=True),
        "engine_1_task": lambda: engine(x, one),
        "engine_16_tasks": lambda: engine(x, mixed),
        "engine_16_tasks_no_temporal": lambda: engine(x, no_temporal),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for key, fn in runs.items():
            start = time.process_time()
            fn()
            times[key].append(time.process_time() - start)
    rows = {}
    for key, ts in times.items():
        ratios = [p / t for p, t in zip(times["plain"], ts, strict=True)]
        rows[key] = {
            "median_s": round(statistics.median(ts), 3),
            "clips_per_cpu_s": round(batch / statistics.median(ts), 3),
            "ratio_plain_over_this": round(statistics.median(ratios), 3),
            "times_s": [round(t, 3) for t in ts],
        }
    return {"batch": batch, "frames": frames, "tokens_per_clip": frames // 2 * 196, "reps": reps, "rows": rows}


def share() -> dict:
    """Parameters of a d^=64 clip task on VideoMAE ViT-B (and on an inflated ViT-B/16), with and without ``diff``."""
    vit = _vit(BASE, 16)
    backbone = sum(p.numel() for p in vit.parameters())
    dim, depth = vit.embed_dim, len(vit.blocks)
    branches = depth * (2 * dim * 64 + 64 + dim)
    head = 174 * dim + 174
    proj = vit.patch_embed.proj
    diff = TemporalPart(TemporalConfig(), dim, proj.kernel_size, proj.in_channels, 2, 8).diff
    assert diff is not None
    temporal = diff.numel()
    # The same counts through the library (add_adapters' report), to keep this arithmetic honest.
    model = af.add_adapters(VideoViT(vit, 16, 2), af.AdapterConfig(bottleneck=64), num_classes=174)
    report = af.trainable_parameters(model)
    assert (report.backbone, report.adapters, report.head) == (backbone, branches, head), report
    return {
        "backbone_params": backbone,
        "branches": branches,
        "head_174": head,
        "temporal_diff": temporal,
        "percent_without_temporal": round(100 * (branches + head) / backbone, 3),
        "percent_with_diff": round(100 * (branches + head + temporal) / backbone, 3),
    }


def report(r: dict) -> str:
    lines = [
        *report_head("VideoMAE as the video backbone", r),
        "## Loading fidelity (tiny random models, `transformers` as the reference)",
        "",
        "| checkpoint layout | max abs diff, last hidden state | max abs diff, pooled features |",
        "|---|---|---|",
    ]
    for name, d in r["fidelity"].items():
        lines.append(f"| {name} | {d['tokens']:.2e} | {d['pooled']:.2e} |")
    t = r["throughput"]
    lines += [
        "",
        f"## Video engine at ViT-S size (CPU, 1 thread, batch {t['batch']}, {t['frames']} frames = "
        f"{t['tokens_per_clip']} tokens per clip, {t['reps']} interleaved reps)",
        "",
        "| run | median CPU s per batch | clips per CPU s | plain / this (median of paired ratios) |",
        "|---|---|---|---|",
    ]
    labels = {"plain": "plain video model (VideoViT, pooled features)", "engine_1_task": "engine, 1 clip task",
              "engine_16_tasks": "engine, 16 clip tasks mixed (one clip each)",
              "engine_16_tasks_no_temporal": "engine, 16 clip tasks mixed, no temporal part"}  # fmt: skip
    for key, row in t["rows"].items():
        lines.append(
            f"| {labels[key]} | {row['median_s']} | {row['clips_per_cpu_s']} | {row['ratio_plain_over_this']} |"
        )
    s = r["share"]
    lines += [
        "",
        "Every task: d^=64 branches in all 12 blocks, a 10-class head and a `diff` temporal kernel (today's default; "
        "the last row without it, what `--temporal none` trains).",
        "",
        "## Parameter share of a d^=64 clip task on VideoMAE ViT-B (174 classes)",
        "",
        f"Backbone {s['backbone_params']:,} parameters (the tubelet kernel included; the sine-cosine table is not a "
        f"weight). Branches {s['branches']:,}, head {s['head_174']:,}, `diff` temporal kernel {s['temporal_diff']:,}.",
        "",
        "| clip task | trainable | % of the backbone |",
        "|---|---|---|",
        f"| branches + head (`--temporal none`) | {s['branches'] + s['head_174']:,} | {s['percent_without_temporal']} |",
        f"| branches + head + `diff` (today's default) | {s['branches'] + s['head_174'] + s['temporal_diff']:,} | "
        f"{s['percent_with_diff']} |",
        "",
        "GPU: no device was lent to this run; the bf16 VideoMAE ViT-B row of `benchmarks/device_check.sh` is not "
        "measured here.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="batch 4, 2 reps, 4 frames (a smoke run)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the Markdown here and the JSON beside it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = header("benchmarks.videomae", argv)
    with tempfile.TemporaryDirectory() as tmp:
        results["fidelity"] = fidelity(Path(tmp))
    batch, reps, frames = (4, 2, 4) if args.quick else (args.batch, args.reps, args.frames)
    results["throughput"] = throughput(batch, reps, frames)
    results["share"] = share()
    finish(args.out, results, report)
    return results


if __name__ == "__main__":
    main()
