"""The transfer study: its plan covers every claim, its verdicts follow the figures, its quick mode runs end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from adaptformer.data import emoji as emoji_mod
from benchmarks.transfer.__main__ import main
from benchmarks.transfer.claims import HOLDS, Results, check_claims
from benchmarks.transfer.plan import FULL, QUICK, Run, phase_one, phase_two

PARAMS = {
    "embedded": {"backbone": 1_202_432, "adapters": 99_456, "percent": 8.27},
    "vit_base_patch16_224": {"backbone": 85_798_656, "adapters": 1_189_632, "percent": 1.39},
}


def _rows(budget, accuracy) -> list[dict]:
    """Every planned run with a made-up accuracy, as the runner returns them (phase two after the VPT sweep)."""

    def row(run: Run) -> dict:
        return {**run.__dict__, "val_top1": accuracy(run), "trainable_params": 1000 + run.bottleneck}

    first = [row(r) for r in phase_one(budget)]
    best = Results(first, budget).best_vpt_tokens()
    keys = {Run(**{k: r[k] for k in Run.__dataclass_fields__}).key for r in first}
    return first + [row(r) for r in phase_two(budget, best) if r.key not in keys]


def paper_like(run: Run) -> float:
    """Figures shaped like the paper's: AdaptFormer ahead, VPT collapsing from 8 tokens, saturation at 64."""
    base = {"digits": 0.80, "emoji": 0.30, "motion": 0.20}[run.task] + 0.02 * run.frames
    gain = {"linear": 0.0, "vpt": 0.05, "full": 0.07, "adaptformer": 0.08}[run.method]
    if run.method == "vpt" and run.prompt_tokens <= 4:
        gain += 0.002 * run.prompt_tokens  # best at 4 tokens
    if run.method == "vpt" and run.prompt_tokens >= 8:
        gain -= 0.05 + 0.002 * run.seed * run.prompt_tokens
    if run.method == "adaptformer":
        gain -= 0.002 * (6 - (run.layers or 6)) + (0.01 if run.mode == "sequential" else 0)
        gain -= 0.004 * max(0, 6 - run.bottleneck.bit_length()) + abs(run.scale - 0.1) * 0.02
        gain -= 0.01 * (run.adapter_input == "raw")
        gain += 0.05 * (run.task == "motion")
    return round(base + gain + 0.001 * run.seed, 4)


def test_full_plan_has_three_seeds_of_every_setting():
    first = phase_one(FULL)
    assert len(first) == len({r.key for r in first}), "no run is planned twice"
    runs = list(dict.fromkeys(first + phase_two(FULL, best_tokens=4)))  # the runner skips repeats
    per_setting: dict[str, int] = {}
    for r in runs:
        per_setting[r.setting] = per_setting.get(r.setting, 0) + 1
    assert set(per_setting.values()) == {3}
    assert {r.frames for r in runs if r.task == "motion"} == {2, 4, 8}
    assert {r.prompt_tokens for r in runs if r.method == "vpt" and r.task == "digits"} == {1, 2, 4, 8, 16, 32, 64}


def test_paper_like_figures_make_every_claim_hold():
    claims = check_claims(Results(_rows(FULL, paper_like), FULL), PARAMS)
    assert [c.id for c in claims] == list(range(1, 11))
    assert {c.id: c.verdict for c in claims} == {i: HOLDS for i in range(1, 11)}, [
        c for c in claims if c.verdict != HOLDS
    ]


@pytest.mark.parametrize(
    ("claim", "change"),
    [
        (2, lambda r, a: a + 0.2 if r.method == "linear" and r.task == "emoji" else a),
        (3, lambda r, a: a + 0.2 if r.method == "vpt" and r.task == "emoji" else a),
        (4, lambda r, a: a + 0.1 if r.method == "full" and r.task == "digits" else a),
        (
            5,
            lambda r, a: (
                a + 0.06 + 0.002 * r.seed * r.prompt_tokens if r.method == "vpt" and r.prompt_tokens >= 8 else a
            ),
        ),
        (6, lambda r, a: a - 0.1 if r.method == "adaptformer" and r.bottleneck == 1 else a),
        (7, lambda r, a: a + 0.05 if r.mode == "sequential" else a),
        (8, lambda r, a: a + 0.05 if r.scale == 1.0 else a),
        (9, lambda r, a: a - 0.1 if r.method == "linear" and r.frames == 8 else a),
        (10, lambda r, a: a + 0.05 if r.adapter_input == "raw" else a),
    ],
)
def test_a_contrary_figure_turns_its_claim_down(claim, change):
    claims = check_claims(Results(_rows(FULL, lambda r: change(r, paper_like(r))), FULL), PARAMS)
    assert {c.id for c in claims if c.verdict != HOLDS} == {claim}


def test_claim_one_counts_the_paper_backbone():
    params = {**PARAMS, "vit_base_patch16_224": {**PARAMS["vit_base_patch16_224"], "percent": 2.5}}
    claims = check_claims(Results(_rows(FULL, paper_like), FULL), params)
    assert claims[0].verdict != HOLDS and "8.27%" in claims[0].measured


def test_results_average_over_seeds():
    rows = _rows(FULL, paper_like)
    res = Results(rows, FULL)
    stat = res[Run("digits", "linear", seed=0)]
    assert stat.values == (0.82, 0.821, 0.822)
    assert stat.mean == pytest.approx(0.821) and stat.std == pytest.approx(0.001)
    assert res.best_vpt_tokens() == 4
    assert res[replace(Run("digits", "linear", seed=0), seed=2)] == stat


@pytest.mark.skipif(
    not (emoji_mod.EMOJI_FONT.is_file() and emoji_mod.EMOJI_TEST.is_file()),
    reason="emoji font or emoji-test.txt absent (sudo apt-get install fonts-noto-color-emoji unicode-data)",
)
def test_quick_study_end_to_end_and_resume(tmp_path, capsys):
    main(["--quick", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "transfer_quick.json").read_text())
    planned = phase_one(QUICK) + phase_two(QUICK, Results(doc["runs"], QUICK).best_vpt_tokens())
    assert {json.dumps({k: r[k] for k in Run.__dataclass_fields__}, sort_keys=True) for r in doc["runs"]} == {
        r.key for r in planned
    }
    assert all(0.0 <= r["val_top1"] <= 1.0 and r["trainable_params"] > 0 for r in doc["runs"])
    assert [c["id"] for c in doc["claims"]] == list(range(1, 11))
    assert all(c["verdict"] in ("holds", "does not hold") for c in doc["claims"])
    report = (tmp_path / "transfer_quick.md").read_text()
    assert "python -m benchmarks.transfer --quick" in report and "| 10 |" in report
    for svg in ("transfer_quick_tradeoff.svg", "transfer_quick_ablations.svg"):
        assert "<svg" in (tmp_path / svg).read_text() and svg in report
    assert doc["meta"]["reused"] == 0

    # A second invocation reuses every finished run from the log and reports the same figures.
    main(["--quick", "--out", str(tmp_path)])
    again = json.loads((tmp_path / "transfer_quick.json").read_text())
    assert again["meta"]["reused"] == len(doc["runs"])
    assert again["runs"] == doc["runs"]

    # --render rewrites the report from the JSON alone, keeping the original invocation's figures.
    (tmp_path / "transfer_quick.md").unlink()
    main(["--quick", "--render", "--out", str(tmp_path)])
    assert (tmp_path / "transfer_quick.md").read_text().count("| 10 |") == 1
    assert json.loads((tmp_path / "transfer_quick.json").read_text())["meta"] == again["meta"]
