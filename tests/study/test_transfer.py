"""The transfer study: its plan, its lr search, its verdicts on made-up worlds, and its quick mode end to end."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest

from benchmarks.transfer.__main__ import main
from benchmarks.transfer.claims import Results, check_claims
from benchmarks.transfer.plan import FULL, QUICK, Setting, final_runs, followups, plan, select_lr, settings
from benchmarks.transfer.stats import FAILS, HOLDS, INCONCLUSIVE, encode_bits

WIDTH = 128
PARAMS = {
    "embedded": {"width": 128, "64": {"backbone": 1_202_432, "adapters": 99_456, "percent": 8.27},
                 "11": {"backbone": 1_202_432, "adapters": 17_820, "percent": 1.48}},
    "vit_base_patch16_224": {"width": 768, "64": {"backbone": 85_798_656, "adapters": 1_189_632, "percent": 1.39}},
}  # fmt: skip
SMALL = replace(FULL, test=400)  # the full plan, fewer test items: the bootstrap stays quick


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    monkeypatch.setattr("benchmarks.transfer.stats.N_BOOT", 1000)


def paper_world(s: Setting) -> float:
    """Test accuracy of a setting in a world where every claim of the paper is true (by a clear margin)."""
    gain = {"linear": 0.0, "vpt": 0.05, "adaptformer": 0.10, "full": 0.09}[s.method]
    if s.method == "adaptformer":
        gain -= 0.05 * (s.layers == 1) + 0.05 * (s.mode == "sequential") + 0.01 * (s.adapter_input == "raw")
        if s.arm == "sgd":
            gain -= {0.01: 0.04, 0.1: 0.0, 1.0: 0.02}[s.scale]
    if s.method == "vpt" and s.arm == "sgd":
        gain = {1: 0.03, 8: 0.05, 32: 0.0}[s.prompt_tokens]
    return 0.6 + gain


def rows_for(budget, world, knn_world=None) -> list[dict]:
    """Every run the runner would make, with made-up results: the middle lr wins the search; a setting of
    accuracy p is right on the test items whose difficulty is below p, so equal settings agree item by item."""
    difficulty = np.random.default_rng(0).random(budget.test)

    def row(run) -> dict:
        grid = budget.lr_grid[run.method] if run.arm == "adamw" else (budget.sgd_lr,)
        best = grid[len(grid) // 2] if run.arm == "adamw" else budget.sgd_lr
        acc = world(run.setting) + 0.003 * run.seed  # every setting shares each seed's luck: paired
        knn = (knn_world or paper_world)(run.setting) + 0.003 * run.seed
        return {**asdict(run), "val_top1": 0.5 - abs(np.log(run.lr / best)), "val_loss": 1.0,
                "test_top1": acc, "test_n": budget.test, "test_bits": encode_bits(difficulty < acc),
                "knn_top1": knn, "knn_bits": encode_bits(difficulty < knn), "silhouette": 0.1,
                "trainable_params": 1000}  # fmt: skip

    rows: dict[str, dict] = {r.key: row(r) for r in plan(budget, WIDTH)}
    rows.update({r.key: row(r) for r in followups(budget, WIDTH, rows)})
    return list(rows.values())


def verdicts(world, knn_world=None) -> dict[int, str]:
    res = Results(rows_for(SMALL, world, knn_world), SMALL, WIDTH)
    return {c.id: c.verdict for c in check_claims(res, PARAMS)}


def test_the_full_plan_gives_every_setting_five_seeds_at_one_lr():
    rows = rows_for(FULL, paper_world)
    final = final_runs(FULL, WIDTH, {Setting(**{k: r[k] for k in Setting.__dataclass_fields__}).run(
        r["seed"], r["lr"]).key: r for r in rows})  # fmt: skip
    assert set(final) == set(settings(FULL, WIDTH))
    for s, rs in final.items():
        assert sorted(r["seed"] for r in rs) == [0, 1, 2, 3, 4]
        assert len({r["lr"] for r in rs}) == 1
        grid = FULL.lr_grid[s.method]
        assert rs[0]["lr"] == (grid[len(grid) // 2] if s.arm == "adamw" else 0.025)
    searched = [r for r in rows if r["arm"] == "adamw" and r["seed"] == 0]
    adamw = [s for s in settings(FULL, WIDTH) if s.arm == "adamw"]
    assert all(3 <= len(FULL.lr_grid[s.method]) <= 4 for s in adamw)
    assert len(searched) == sum(len(FULL.lr_grid[s.method]) for s in adamw)
    assert len(rows) == len(searched) + 4 * len(adamw) + 5 * sum(s.arm == "sgd" for s in settings(FULL, WIDTH))


def test_the_plan_holds_what_the_claims_need():
    ss = settings(FULL, WIDTH)
    t = FULL.sweep_task
    assert Setting(t, "adaptformer", bottleneck=11) in ss  # 128 / 12: the paper's share of the width
    assert {s.prompt_tokens for s in ss if s.method == "vpt" and s.arm == "sgd"} == {1, 8, 32}
    assert {s.scale for s in ss if s.method == "adaptformer" and s.arm == "sgd"} == {0.01, 0.1, 1.0}
    assert {s.task for s in ss if s.method == "full"} == set(FULL.near)  # full fine-tuning on near tasks only
    # The far-domain controls come last: a study cut short loses them first.
    assert [s.task in FULL.far for s in ss] == sorted(s.task in FULL.far for s in ss)


def test_lr_search_takes_the_best_validation_top1_and_breaks_ties_by_loss():
    s = Setting("digits", "adaptformer")
    rows = {s.run(0, lr).key: {"val_top1": v, "val_loss": loss}
            for lr, v, loss in ((1e-3, 0.5, 1.0), (3e-3, 0.7, 0.9), (1e-2, 0.7, 0.8), (3e-2, 0.6, 0.5))}  # fmt: skip
    assert select_lr(FULL, s, rows) == 1e-2
    rows.pop(s.run(0, 1e-3).key)
    assert select_lr(FULL, s, rows) is None  # the search has not ended
    assert select_lr(FULL, Setting("digits", "vpt", "sgd", prompt_tokens=8), {}) == 0.1 * 64 / 256


def test_a_world_where_the_paper_is_right_makes_every_counted_claim_hold():
    got = verdicts(paper_world)
    assert got == {**{i: HOLDS for i in range(1, 12)}, 12: "not tested"}, got


def _with(change):
    return lambda s: change(s, paper_world(s))


@pytest.mark.parametrize(
    ("claim", "change"),
    [
        (2, lambda s, a: a + 0.10 if s.method == "linear" and s.task == "fashion-tint" else a),
        (3, lambda s, a: a + 0.06 if s.method == "vpt" and s.arm == "adamw" and s.task == "fashion-turned" else a),
        (4, lambda s, a: a + 0.10 if s.method == "full" else a),
        (5, lambda s, a: a + 0.05 if s.method == "vpt" and s.prompt_tokens == 32 else a),
        (6, lambda s, a: a - 0.05 if s.bottleneck == 11 else a),
        (7, lambda s, a: a + 0.05 if s.layers == 1 else a),
        (8, lambda s, a: a + 0.05 if s.mode == "sequential" else a),
        (9, lambda s, a: a + 0.10 if s.arm == "sgd" and s.scale == 1.0 else a),
        (10, lambda s, a: a + 0.05 if s.adapter_input == "raw" else a),
    ],
)
def test_a_contrary_world_fails_its_claim_and_no_other(claim, change):
    got = verdicts(_with(change))
    assert {i for i, v in got.items() if v not in (HOLDS, "not tested")} == {claim}
    assert got[claim] == FAILS


def test_a_margin_at_the_tolerance_is_inconclusive():
    """VPT 0.01 behind AdaptFormer: the interval of D straddles the tolerance."""
    got = verdicts(_with(lambda s, a: a + 0.04 if s.method == "vpt" and s.arm == "adamw" else a))
    assert got[3] == INCONCLUSIVE


def test_far_domain_controls_are_shown_but_not_counted():
    got = verdicts(_with(lambda s, a: a + 0.2 if s.method == "linear" and s.task == "digits" else a))
    assert got[2] == HOLDS


def test_feature_claim_reads_the_knn_figures():
    got = verdicts(paper_world, _with(lambda s, a: a + 0.05 if s.method == "vpt" else a))
    assert got[11] == FAILS and got[3] == HOLDS


@pytest.mark.slow  # about 2 CPU-minutes (36 tiny runs, twice the report): over the budget of the default run
def test_quick_study_end_to_end_and_resume(tmp_path):
    main(["--quick", "--out", str(tmp_path), "--workers", "1"])
    doc = json.loads((tmp_path / "transfer_quick.json").read_text())
    assert len(doc["runs"]) == len({json.dumps(r, sort_keys=True) for r in doc["runs"]})
    assert {Setting(**{k: r[k] for k in Setting.__dataclass_fields__}) for r in doc["runs"]} == set(
        settings(QUICK, WIDTH)
    )
    assert all(0.0 <= r["test_top1"] <= 1.0 and r["test_n"] == 32 for r in doc["runs"])
    assert [c["id"] for c in doc["claims"]] == list(range(1, 13))
    assert all(c["verdict"] in (HOLDS, FAILS, INCONCLUSIVE, "not tested") for c in doc["claims"])
    report = (tmp_path / "transfer_quick.md").read_text()
    assert "python -m benchmarks.transfer --quick" in report and "| 12 |" in report
    for svg in ("transfer_quick_claims.svg", "transfer_quick_features.svg"):
        assert "<svg" in (tmp_path / svg).read_text() and svg in report
    assert doc["meta"]["reused"] == 0

    # A second invocation reuses every finished run from the log and reports the same figures.
    main(["--quick", "--out", str(tmp_path), "--workers", "1"])
    again = json.loads((tmp_path / "transfer_quick.json").read_text())
    assert again["meta"]["reused"] == len(doc["runs"])
    assert again["runs"] == doc["runs"]

    # --render rewrites the report from the JSON alone, keeping the original invocation's figures.
    (tmp_path / "transfer_quick.md").unlink()
    main(["--quick", "--render", "--out", str(tmp_path)])
    assert (tmp_path / "transfer_quick.md").read_text().count("| 12 |") == 1
    assert json.loads((tmp_path / "transfer_quick.json").read_text())["meta"] == again["meta"]


@pytest.mark.slow
def test_another_backbone_runs_with_local_weights(tmp_path):
    """A timm ViT-S/16 with random weights from a local file: the option works end to end (one setting)."""
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "vit_s.safetensors"
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    main(["--quick", "--backbone", "vit_small_patch16_224", "--weights", str(weights), "--settings", "1",
          "--workers", "1", "--out", str(tmp_path)])  # fmt: skip
    doc = json.loads((tmp_path / "transfer_vit_small_patch16_224_quick.json").read_text())
    assert doc["meta"]["width"] == 384 and doc["meta"]["backbone"] == "vit_small_patch16_224"
    assert {r["method"] for r in doc["runs"]} == {"linear"}
    assert "vit_small_patch16_224" in doc["parameters"]
