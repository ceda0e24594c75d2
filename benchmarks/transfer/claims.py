"""The paper's claims, each a set of compared pairs with bootstrap intervals and one verdict rule (stats.py)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from benchmarks.transfer.plan import Budget, Setting, af, final_runs, main_settings, select_lr, vpt, width_bottleneck
from benchmarks.transfer.runner import setting_of
from benchmarks.transfer.stats import TOL, Diff, combine, decode_bits, paired_bootstrap, verdict

__all__ = ["Claim", "Results", "Stat", "check_claims", "parameter_counts"]

NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Stat:
    """Test top-1 over the seeds of one setting at its chosen lr."""

    mean: float
    std: float
    values: tuple[float, ...]
    lr: float
    trainable_params: int
    knn: float | None = None
    silhouette: float | None = None

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}" if len(self.values) > 1 else f"{self.mean:.3f}"


@dataclass(frozen=True)
class Claim:
    id: int
    claim: str
    verdict: str
    parts: list[Diff] = field(default_factory=list)
    measured: str = ""
    rule: str = ""


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


class Results:
    """The rows grouped by setting, at each setting's chosen learning rate."""

    def __init__(self, rows: list[dict], budget: Budget, width: int) -> None:
        self.budget, self.width = budget, width
        self.rows = {setting_of(r).run(r["seed"], r["lr"]).key: r for r in rows}
        self.final = final_runs(budget, width, self.rows)

    def __contains__(self, s: Setting) -> bool:
        return s in self.final

    def lr(self, s: Setting) -> float | None:
        return select_lr(self.budget, s, self.rows)

    def __getitem__(self, s: Setting) -> Stat:
        rs = sorted(self.final[s], key=lambda r: r["seed"])
        acc = [r["test_top1"] for r in rs]
        knn = [r["knn_top1"] for r in rs if "knn_top1" in r]
        sil = [r["silhouette"] for r in rs if "silhouette" in r]
        return Stat(statistics.fmean(acc), _sd(acc), tuple(acc), rs[0]["lr"], rs[0]["trainable_params"],
                    statistics.fmean(knn) if knn else None, statistics.fmean(sil) if sil else None)  # fmt: skip

    def bits(self, s: Setting, field: str = "test") -> dict[int, np.ndarray]:
        return {r["seed"]: decode_bits(r[f"{field}_bits"], r["test_n"]) for r in self.final[s] if f"{field}_bits" in r}

    def diff(self, label: str, a: Setting, b: Setting, kind: str, counts: bool = True, field: str = "test") -> Diff:
        """A minus B on the test items, over the seeds both have; an empty interval when one is missing."""
        if a not in self or b not in self:
            return Diff(label, _name(a), _name(b), float("nan"), float("nan"), float("nan"), kind, NOT_TESTED,
                        counts)  # fmt: skip
        ba, bb = self.bits(a, field), self.bits(b, field)
        seeds = sorted(ba.keys() & bb.keys())
        if not seeds:
            return Diff(label, _name(a), _name(b), float("nan"), float("nan"), float("nan"), kind, NOT_TESTED,
                        counts)  # fmt: skip
        mean, lo, hi = paired_bootstrap(np.stack([ba[s] for s in seeds]), np.stack([bb[s] for s in seeds]))
        return Diff(label, _name(a), _name(b), mean, lo, hi, kind, verdict(lo, hi, kind), counts)


def _name(s: Setting) -> str:
    """A short name of a setting: method and the knobs that differ from the paper's defaults."""
    bits = [{"adaptformer": "AdaptFormer", "vpt": "VPT", "linear": "linear", "full": "full FT"}[s.method]]
    if s.method == "vpt":
        bits.append(f"{s.prompt_tokens} tokens")
    if s.method == "adaptformer":
        if s.bottleneck != 64:
            bits.append(f"d^={s.bottleneck}")
        if s.scale != 0.1:
            bits.append(f"s={s.scale:g}")
        if s.layers:
            bits.append(f"{s.layers} block" + "s" * (s.layers > 1))
        if s.mode != "parallel":
            bits.append(s.mode)
        if s.adapter_input != "ln":
            bits.append(f"{s.adapter_input} x'")
    if s.arm == "sgd":
        bits.append("SGD+BN")
    return ", ".join(bits)


def parameter_counts(width_bottlenecks: dict[str, int] | None = None, backbone=None) -> dict:
    """Adapter parameters (every block) relative to the frozen backbone, at d^=64 and at the width's 1/12."""
    import timm

    from adaptformer.backbone import load_backbone
    from adaptformer.config import AdapterConfig
    from adaptformer.model import add_adapters, trainable_parameters

    models = {"embedded": lambda: load_backbone().model, "vit_base_patch16_224": lambda: timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=0)}  # fmt: skip
    if backbone is not None and backbone.name not in ("embedded", "adaptformer-embedded-vit"):
        models[backbone.name] = lambda: timm.create_model(backbone.name, pretrained=False, num_classes=0)
    out = {}
    for name, make in models.items():
        width = make().embed_dim
        row = {"width": width}
        for d in dict.fromkeys((64, width_bottleneck(width))):
            rep = trainable_parameters(add_adapters(make(), AdapterConfig(bottleneck=d), num_classes=100))
            row[str(d)] = {
                "backbone": rep.backbone,
                "adapters": rep.adapters,
                "percent": round(rep.adapters_percent, 3),
            }
        out[name] = row
    return out


def _claim(id: int, text: str, parts: list[Diff], measured: str = "") -> Claim:
    counted = [p.verdict for p in parts if p.counts]
    v = NOT_TESTED if counted and all(x == NOT_TESTED for x in counted) else combine(
        [x for x in counted if x != NOT_TESTED])  # fmt: skip
    return Claim(id, text, v, parts, measured)


def check_claims(res: Results, params: dict) -> list[Claim]:
    b, t = res.budget, res.budget.sweep_task
    claims: list[Claim] = []

    vb = params["vit_base_patch16_224"]["64"]
    parts = [
        f"{name} (width {p['width']}): d^=64 is {64 / p['width']:.3g} of the width, {p['64']['percent']:.2f}%"
        + (
            f"; d^={d} (1/12 of the width) {p[str(d)]['percent']:.2f}%"
            if (d := width_bottleneck(p["width"])) != 64
            else ""
        )
        for name, p in params.items()
    ]
    claims.append(Claim(1, "AdaptFormer (d^=64, every block) adds < 2% parameters to a ViT-B/16",
                        "holds" if vb["percent"] < 2 else "fails", [], "; ".join(parts),
                        "a count: adapter parameters / frozen backbone parameters"))  # fmt: skip

    def per_task(method: str, kind: str, field: str = "test") -> list[Diff]:
        out = []
        for task in b.tasks:
            m = main_settings(b, task)
            if method in m:
                out.append(res.diff(task, m["adaptformer"], m[method], kind, task in b.near, field))
        return out

    claims.append(_claim(2, "AdaptFormer beats linear probing (near-domain tasks; far ones as controls)",
                         per_task("linear", "better")))  # fmt: skip
    claims.append(_claim(3, f"AdaptFormer beats VPT-deep ({b.vpt_tokens} tokens)", per_task("vpt", "better")))
    claims.append(_claim(4, "AdaptFormer at least matches full fine-tuning", per_task("full", "not_worse")))

    big = max(b.sgd_tokens)
    claims.append(_claim(5, "VPT degrades past 8 tokens while AdaptFormer with more parameters does not (SGD+BN)", [
        res.diff(f"VPT {big} vs 8 tokens", vpt(t, big, "sgd"), vpt(t, 8, "sgd"), "worse"),
        res.diff(f"AdaptFormer d^={b.sgd_bottleneck} vs 64", af(t, "sgd", bottleneck=b.sgd_bottleneck),
                 af(t, "sgd"), "not_worse"),
        *[res.diff(f"VPT {n} vs 8 tokens", vpt(t, n, "sgd"), vpt(t, 8, "sgd"), "worse", counts=False)
          for n in b.sgd_tokens if n < 8],
    ]))  # fmt: skip

    d = width_bottleneck(res.width)
    claims.append(_claim(6, f"d^ saturates at 1/12 of the width (here d^={d}): d^=64 adds no more than the tolerance",
                         [res.diff(f"d^=64 vs d^={d}", af(t), af(t, bottleneck=d), "no_better")] if d != 64 else []))  # fmt: skip
    claims.append(_claim(7, "adapting every block beats adapting the first one",
                         [res.diff("all blocks vs 1", af(t), af(t, layers=1), "better")]))  # fmt: skip
    claims.append(_claim(8, "parallel beats sequential", [res.diff("parallel vs sequential", af(t),
                                                                   af(t, mode="sequential"), "better")]))  # fmt: skip
    claims.append(_claim(9, "s = 0.1 is at least as good as other scales (SGD+BN recipe; tuned AdamW shown)", [
        *[res.diff(f"s=0.1 vs {s:g}, SGD+BN", af(t, "sgd"), af(t, "sgd", scale=s), "not_worse")
          for s in b.sgd_scales if s != 0.1],
        *[res.diff(f"s=0.1 vs {s:g}, AdamW tuned", af(t), af(t, scale=s), "not_worse", counts=False)
          for s in b.scales],
    ]))  # fmt: skip
    claims.append(_claim(10, "LN(x') as the branch input is at least as good as raw x'",
                         [res.diff("LN(x') vs raw x'", af(t), af(t, adapter_input="raw"), "not_worse")]))  # fmt: skip

    feats = []
    for task in b.tasks:
        m = main_settings(b, task)
        for other in ("vpt", "linear"):
            feats.append(res.diff(f"{task}: k-NN, vs {other}", m["adaptformer"], m[other], "better", task in b.near,
                                  "knn"))  # fmt: skip
    sil = "; ".join(
        f"{task}: "
        + ", ".join(
            f"{k} {res[s].silhouette:+.3f}"
            for k, s in main_settings(b, task).items()
            if s in res and res[s].silhouette is not None
        )
        for task in b.tasks
    )
    claims.append(_claim(11, "AdaptFormer's features separate the classes better than VPT's and linear probing's "
                             "(k-NN top-1, k=10, on the test split)", feats, f"silhouette (cosine): {sil}"))  # fmt: skip
    claims.append(Claim(12, "more frames help every method on video", NOT_TESTED, [],
                        "no clip task in this run (see the study document)"))  # fmt: skip
    return claims


__all__ += ["TOL"]
