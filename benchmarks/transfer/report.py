"""The study's outputs: JSON, a Markdown report, a plot of every interval and a plot of the features."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from benchmarks.transfer.claims import Claim, Results, _name
from benchmarks.transfer.plan import main_settings, settings
from benchmarks.transfer.stats import KINDS, LEVEL, N_BOOT, TOL

__all__ = ["write_outputs"]

COLOURS = {"holds": "#2a7d2a", "fails": "#b22222", "inconclusive": "#d08c00", "not tested": "#888888"}


def _plots(res: Results, claims: list[Claim], out: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    parts = [(c.id, p) for c in claims for p in c.parts if not math.isnan(p.mean)]
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(parts) + 1.4))
    for i, (_cid, p) in enumerate(parts):
        y = len(parts) - i
        ax.plot([p.lo, p.hi], [y, y], color=COLOURS[p.verdict], lw=2.5, alpha=1.0 if p.counts else 0.45)
        ax.plot([p.mean], [y], "o", color=COLOURS[p.verdict], ms=4)
    ax.set_yticks([len(parts) - i for i in range(len(parts))])
    ax.set_yticklabels([f"{cid}: {p.label}" + ("" if p.counts else " (shown)") for cid, p in parts], fontsize=7)
    ax.axvspan(-TOL, TOL, color="#dddddd", zorder=0)
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel(f"difference of test top-1 (A - B), {LEVEL:.0%} paired bootstrap interval; grey band ±{TOL}")
    ax.set_title("Each compared pair: green holds, red fails, amber inconclusive", fontsize=9)
    fig.tight_layout()
    names.append(f"{stem}_claims.svg")
    fig.savefig(out / names[-1], metadata={"Date": None})
    plt.close(fig)

    t = res.budget.sweep_task
    m = main_settings(res.budget, t)
    shown = [(k, m[k]) for k in ("linear", "vpt", "adaptformer") if m[k] in res]
    tsne = {}
    for k, s in shown:
        lr = res.lr(s)
        row = res.rows.get(s.run(res.budget.seeds[0], lr).key) if lr is not None else None
        if row and "tsne" in row:
            tsne[k] = (s, row)
    if tsne:
        fig, axes = plt.subplots(1, len(tsne), figsize=(3.4 * len(tsne), 3.6), squeeze=False)
        for ax, (s, row) in zip(axes[0], tsne.values(), strict=True):
            xy, lab = row["tsne"], row["tsne_labels"]
            ax.scatter([p[0] for p in xy], [p[1] for p in xy], c=lab, cmap="tab10", s=5)
            st = res[s]
            ax.set_title(f"{_name(s)}\nk-NN {st.knn:.3f}, silhouette {st.silhouette:+.3f}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle(f"t-SNE of test features, {t}, seed {res.budget.seeds[0]} (k-NN, silhouette: mean of seeds)",
                     fontsize=9)  # fmt: skip
        fig.tight_layout()
        names.append(f"{stem}_features.svg")
        fig.savefig(out / names[-1], metadata={"Date": None})
        plt.close(fig)
    return names


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "" if v is None else format(v, spec)


def write_outputs(res: Results, claims: list[Claim], rows: list[dict], meta: dict, params: dict, out: Path,
                  stem: str) -> None:  # fmt: skip
    doc = {"meta": meta, "parameters": params, "claims": [asdict(c) for c in claims], "runs": rows}
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    plots = _plots(res, claims, out, stem)
    b = res.budget
    lines = [
        f"# Transfer study ({meta['budget']}, backbone {meta['backbone']})",
        "",
        f"Command: `{meta['command']}` at commit {meta['commit']}, {meta['date']}; {meta['machine']}; wall time "
        f"{meta['wall_seconds'] / 60:.1f} min for {meta['runs']} runs ({meta['reused']} reused from the log).",
        "",
        f"Recipe: {meta['recipe']}.",
        "",
        f"Rule: every claim is a statement about a difference D of test top-1 (A - B); D's {LEVEL:.0%} interval "
        f"comes from a paired bootstrap ({N_BOOT} resamples of seeds and test items together). Tolerance {TOL} for "
        "every claim. A part holds when the whole interval is on the claim's side of its boundary, fails when it "
        "is wholly on the other side, and is inconclusive when it straddles it; a claim fails if one counted part "
        "fails and holds if every counted part holds. Kinds: "
        + "; ".join(f"`{k}`: {v}" for k, v in KINDS.items())
        + ".",
        "",
        "| # | claim | verdict | parts: A vs B, D [interval], kind, verdict |",
        "|---|---|---|---|",
    ]
    for c in claims:
        parts = "<br>".join(
            f"{p.label}: {p.a} vs {p.b}: {p.interval()} `{p.kind}` {p.verdict}" + ("" if p.counts else " (shown, not counted)")
            for p in c.parts
        )  # fmt: skip
        missing = sum(p.counts and p.verdict == "not tested" for p in c.parts)
        counted = sum(p.counts for p in c.parts)
        note = (
            f" (on {counted - missing} of {counted} counted parts: the rest did not run)"
            if 0 < missing < counted
            else ""
        )
        lines.append(f"| {c.id} | {c.claim} | **{c.verdict}**{note} | {parts or c.measured} |")
    notes = [f"- claim {c.id}: {c.measured}" for c in claims if c.measured and c.parts]
    if notes:
        lines += ["", *notes]
    lines += ["", *[f"![{p}]({p})" for p in plots], "", "## Every setting", "",
              "Test top-1 over seeds at the lr the validation split chose (the search ran seed "
              f"{b.seeds[0]}; val top-1 of each grid value listed).", "",
              "| task | setting | lr | val top-1 by lr | test top-1 | seeds | trainable | k-NN | silhouette |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in settings(b, res.width):
        if s not in res:
            lines.append(f"| {s.task} | {_name(s)} | | | not run | | | | |")
            continue
        st = res[s]
        grid = [s.run(b.seeds[0], lr).key for lr in (b.lr_grid[s.method] if s.arm == "adamw" else [b.sgd_lr])]
        vals = ", ".join(
            f"{res.rows[k]['lr']:g}: {res.rows[k]['val_top1']:.3f}" for k in grid if k in res.rows
        )  # fmt: skip
        lines.append(
            f"| {s.task} | {_name(s)} | {st.lr:g} | {vals} | {st} | {len(st.values)} | {st.trainable_params:,} | "
            f"{_fmt(st.knn)} | {_fmt(st.silhouette, '+.3f')} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
