"""The study's outputs: JSON, a Markdown report and two plots."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.transfer.claims import Claim, Results
from benchmarks.transfer.plan import DEPTH, adaptformer, vpt

__all__ = ["write_outputs"]


def _plots(res: Results, out: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, t = res.budget, res.budget.sweep_task
    names = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, runs, marker in (
        ("VPT-deep, tokens", {n: vpt(t, n) for n in b.vpt_tokens}, "s"),
        ("AdaptFormer, d^", {d: adaptformer(t, bottleneck=d) for d in b.bottlenecks}, "o"),
    ):
        stats = {k: res[r] for k, r in runs.items()}
        xs = [s.trainable_params for s in stats.values()]
        ax.errorbar(xs, [s.mean for s in stats.values()], yerr=[s.std for s in stats.values()], marker=marker,
                    capsize=3, label=label)  # fmt: skip
        for k, s in stats.items():
            ax.annotate(str(k), (s.trainable_params, s.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    lin = res.main(t)["linear"]
    ax.axhline(lin.mean, color="grey", ls=":", label="linear probing")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(f"{t} val top-1 (mean ± std over seeds)")
    ax.set_title("Accuracy vs trainable parameters, embedded backbone")
    ax.legend()
    fig.tight_layout()
    names.append(f"{stem}_tradeoff.svg")
    fig.savefig(out / names[-1], metadata={"Date": None})
    plt.close(fig)

    panels = [
        ("bottleneck d^", {str(d): adaptformer(t, bottleneck=d) for d in b.bottlenecks}),
        ("adapted layers (parallel)", {str(k): adaptformer(t, layers=k % DEPTH) for k in b.parallel_layers}),
        ("scale s", {**{f"{s:g}": adaptformer(t, scale=s) for s in b.scales},
                     "learn": adaptformer(t, learnable_scale=True)}),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    for ax, (title, runs) in zip(axes, panels, strict=False):
        stats = [res[r] for r in runs.values()]
        ax.errorbar(range(len(stats)), [s.mean for s in stats], yerr=[s.std for s in stats], marker="o", capsize=3)
        ax.set_xticks(range(len(stats)), list(runs))
        ax.set_title(f"{t}: {title}")
        ax.set_ylabel("val top-1")
    ax = axes[3]
    if "motion" in b.tasks:
        for method in ("linear", "vpt", "adaptformer", "full"):
            stats = [res.main("motion", frames=f)[method] for f in b.frames]
            ax.errorbar(b.frames, [s.mean for s in stats], yerr=[s.std for s in stats], marker="o", capsize=3,
                        label=method)  # fmt: skip
        ax.set_xticks(b.frames)
        ax.set_title("motion: frames per clip")
        ax.legend(fontsize=7)
    fig.tight_layout()
    names.append(f"{stem}_ablations.svg")
    fig.savefig(out / names[-1], metadata={"Date": None})
    plt.close(fig)
    return names


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(str(c) for c in r) + " |" for r in rows),
    ]


def write_outputs(res: Results, claims: list[Claim], rows: list[dict], meta: dict, params: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "transfer" if res.budget.name == "full" else f"transfer_{res.budget.name}"
    plots = _plots(res, out, stem)
    b, t = res.budget, res.budget.sweep_task
    doc = {"meta": meta, "parameters": params, "claims": [c.__dict__ for c in claims], "runs": rows}
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")

    held = sum(c.verdict == "holds" for c in claims)
    lines = [
        "# AdaptFormer's claims on the embedded backbone",
        "",
        f"Command: `{meta['command']}` at commit {meta['commit']}, {meta['date']}; {meta['machine']}; "
        f"wall time {meta['wall_seconds'] / 60:.1f} min for {meta['runs']} runs"
        + (f" ({meta['reused']} reused from an interrupted invocation's log)" if meta["reused"] else "")
        + ".",
        "",
        f"Recipe: {b.describe()}. VPT is VPT-deep. AdaptFormer is d^=64, s=0.1, parallel, every block, LN(x') "
        f"input unless the row says otherwise. Ablations run on {t}. Accuracy is validation top-1, mean ± standard "
        "deviation over the seeds. Backbone: the embedded ViT (28x28, patch 4, width 128, 6 blocks, 1.2M "
        "parameters, pretrained on Fashion-MNIST); clips are joint space-time tokens (tubelet 2).",
        "",
        f"**{held} of {len(claims)} claims hold here.**",
        "",
        *_table(
            ["#", "claim", "measured", "verdict", "rule"],
            [[c.id, c.claim, c.measured, f"**{c.verdict}**", c.rule] for c in claims],
        ),
        "",
        "## Methods per task",
        "",
    ]
    main_rows = []
    for task in b.tasks:
        for method, s in res.main(task).items():
            main_rows.append([task, method, str(s), f"{s.trainable_params:,}", ", ".join(f"{v:.3f}" for v in s.values)])
    lines += _table(["task", "method", "top-1", "trainable", "per seed"], main_rows)
    lines += ["", f"VPT's token count for every task is the best of the {t} sweep: {res.best_vpt_tokens()}.", ""]
    lines += [f"![accuracy vs parameters]({plots[0]})", "", f"![ablations]({plots[1]})", ""]
    lines += ["## Runs", "", f"Every run with its figures is in `{stem}.json`."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
