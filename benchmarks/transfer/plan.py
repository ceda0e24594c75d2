"""What the study trains: budgets (epochs, data sizes, learning-rate grids) and the runs they imply.

Two arms share the data and the schedule (linear warmup, then cosine to zero):

- ``adamw``: AdamW, weight decay 1e-4, plain linear head; the learning rate is tuned per method and per
  setting on a validation split carved from the training data (seed 0 at each grid value), then the other
  seeds train at the chosen value.
- ``sgd``: the released code's recipe as far as this study copies it: SGD with momentum 0.9, no weight decay,
  lr 0.1 x batch / 256, a BatchNorm (no affine) before the linear head; no tuning, every seed at that lr.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from adaptformer.config import AdapterConfig
from adaptformer.train import TrainConfig

__all__ = ["BUDGETS", "Budget", "Run", "Setting", "followups", "plan", "select_lr", "settings"]

WEIGHT_DECAY = 1e-4
BATCH = 64
WARMUP_EPOCHS = 1.0


@dataclass(frozen=True)
class Budget:
    """Seeds, epochs, data sizes, learning-rate grids and ablation grids."""

    name: str
    seeds: tuple[int, ...]
    epochs: int
    train: int  # training images per task: the first ``val`` of them are the validation split, the rest fit
    val: int
    test: int  # at most this many test images (fewer where the source has fewer)
    near: tuple[str, ...] = ("fashion-turned", "fashion-tint")
    far: tuple[str, ...] = ("digits", "emoji")
    sweep_task: str = "fashion-turned"
    lr_grid: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "linear": (3e-3, 1e-2, 3e-2, 1e-1),
            "vpt": (1e-3, 3e-3, 1e-2, 3e-2),
            "adaptformer": (1e-3, 3e-3, 1e-2, 3e-2),
            "full": (1e-4, 3e-4, 1e-3, 3e-3),
        }
    )
    vpt_tokens: int = 8  # VPT-deep tokens in the main comparison
    scales: tuple[float, ...] = (0.01, 1.0)  # besides the paper's 0.1
    sgd_tokens: tuple[int, ...] = (1, 8, 32)
    sgd_scales: tuple[float, ...] = (0.01, 0.1, 1.0)
    sgd_bottleneck: int = 256  # AdaptFormer's "more parameters" point in the SGD arm (beside 64)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.near + self.far

    @property
    def sgd_lr(self) -> float:
        return 0.1 * BATCH / 256

    def describe(self) -> str:
        grids = "; ".join(f"{m} {', '.join(f'{v:g}' for v in g)}" for m, g in self.lr_grid.items())
        return (
            f"{self.epochs} epochs, batch {BATCH}, {WARMUP_EPOCHS:g} warmup epoch then cosine to zero, no "
            f"augmentation; per task {self.train - self.val} training images fit, {self.val} more are the "
            f"validation split that picks the lr, at most {self.test} test images are reported; seeds "
            f"{', '.join(map(str, self.seeds))}. AdamW arm: weight decay {WEIGHT_DECAY:g}, linear head, lr grid "
            f"({grids}) searched with seed 0 per setting. SGD arm: momentum 0.9, no weight decay, lr "
            f"{self.sgd_lr:g} (0.1 x {BATCH}/256), BatchNorm (no affine) before the linear head, no search"
        )


FULL = Budget(name="full", seeds=(0, 1, 2, 3, 4), epochs=5, train=700, val=200, test=2000)
QUICK = Budget(
    name="quick", seeds=(0, 1), epochs=1, train=24, val=8, test=32, near=("fashion-turned",), far=("digits",),
    lr_grid={"linear": (1e-2, 3e-2), "vpt": (1e-2,), "adaptformer": (1e-2,), "full": (1e-3,)},
    scales=(1.0,), sgd_tokens=(8, 16), sgd_scales=(0.1, 1.0), sgd_bottleneck=128,
)  # fmt: skip
BUDGETS = {"full": FULL, "quick": QUICK}


@dataclass(frozen=True)
class Setting:
    """Everything about a run but the seed and the learning rate."""

    task: str
    method: str
    arm: str = "adamw"
    bottleneck: int = 64
    scale: float = 0.1
    layers: int = 0  # adapted blocks counted from the first; 0 = all
    mode: str = "parallel"
    adapter_input: str = "ln"
    prompt_tokens: int = 0

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def run(self, seed: int, lr: float) -> Run:
        return Run(**asdict(self), seed=seed, lr=lr)


@dataclass(frozen=True)
class Run(Setting):
    seed: int = 0
    lr: float = 0.0

    @property
    def setting(self) -> Setting:
        d = asdict(self)
        d.pop("seed"), d.pop("lr")
        return Setting(**d)

    def train_config(self, budget: Budget, epochs: int | None = None) -> TrainConfig:
        adapter = AdapterConfig(
            bottleneck=self.bottleneck, scale=self.scale, layers=f"first:{self.layers}" if self.layers else "all",
            mode=self.mode, adapter_input=self.adapter_input,  # type: ignore[arg-type]
        )  # fmt: skip
        sgd = self.arm == "sgd"
        return TrainConfig(
            method=self.method, adapter=adapter, prompt_tokens=max(self.prompt_tokens, 1), vpt_deep=True,
            epochs=epochs or budget.epochs, batch_size=BATCH, lr=self.lr, weight_decay=0.0 if sgd else WEIGHT_DECAY,
            warmup_epochs=WARMUP_EPOCHS, optimizer="sgd" if sgd else "adamw", seed=self.seed, device="cpu",
            eval_every=epochs or budget.epochs,
        )  # fmt: skip


def af(task: str, arm: str = "adamw", **knobs) -> Setting:
    return Setting(task, "adaptformer", arm, **knobs)


def vpt(task: str, tokens: int, arm: str = "adamw") -> Setting:
    return Setting(task, "vpt", arm, prompt_tokens=tokens)


def main_settings(budget: Budget, task: str) -> dict[str, Setting]:
    """The main comparison on one task (AdamW arm); full fine-tuning on the near-domain tasks only."""
    out = {"linear": Setting(task, "linear"), "vpt": vpt(task, budget.vpt_tokens), "adaptformer": af(task)}
    if task in budget.near:
        out["full"] = Setting(task, "full")
    return out


def width_bottleneck(width: int) -> int:
    """The bottleneck that is the paper's share of the width: 64 of ViT-B's 768 is 1/12."""
    return max(1, round(width / 12))


def settings(budget: Budget, width: int) -> list[Setting]:
    """Every setting, in the order the runner starts them: what the counted parts of the claims need first
    (the sweep task's methods and ablations, the SGD arm, the other near-domain task), then what is only shown
    (tuned scales, VPT with 1 token, the far-domain controls), so that a run cut short loses the least."""
    t = budget.sweep_task
    out: list[Setting] = list(main_settings(budget, t).values())
    out += [af(t, bottleneck=width_bottleneck(width)), af(t, layers=1), af(t, mode="sequential"),
            af(t, adapter_input="raw")]  # fmt: skip
    out += [vpt(t, n, "sgd") for n in budget.sgd_tokens if n >= 8]
    out += [af(t, "sgd", scale=s) for s in budget.sgd_scales]
    out += [af(t, "sgd", bottleneck=budget.sgd_bottleneck)]
    for task in budget.near:
        out += list(main_settings(budget, task).values())
    out += [af(t, scale=s) for s in budget.scales]
    out += [vpt(t, n, "sgd") for n in budget.sgd_tokens if n < 8]
    for task in budget.far:
        out += list(main_settings(budget, task).values())
    return list(dict.fromkeys(out))


def plan(budget: Budget, width: int) -> list[Run]:
    """The runs that need no earlier result: the lr search (seed 0) of AdamW settings, every seed of SGD ones."""
    runs: list[Run] = []
    for s in settings(budget, width):
        if s.arm == "sgd":
            runs += [s.run(seed, budget.sgd_lr) for seed in budget.seeds]
        else:
            runs += [s.run(budget.seeds[0], lr) for lr in budget.lr_grid[s.method]]
    return runs


def select_lr(budget: Budget, setting: Setting, rows: dict[str, dict]) -> float | None:
    """The grid value with the best validation top-1 of the first seed (ties: lower validation loss, then the
    smaller lr); None while a search run is missing."""
    if setting.arm == "sgd":
        return budget.sgd_lr
    found = []
    for lr in budget.lr_grid[setting.method]:
        row = rows.get(setting.run(budget.seeds[0], lr).key)
        if row is None:
            return None
        found.append((-row["val_top1"], row["val_loss"], lr))
    return min(found)[2]


def followups(budget: Budget, width: int, rows: dict[str, dict]) -> list[Run]:
    """The other seeds of every AdamW setting whose search has ended, at the chosen lr."""
    out = []
    for s in settings(budget, width):
        lr = select_lr(budget, s, rows)
        if s.arm == "adamw" and lr is not None:
            out += [s.run(seed, lr) for seed in budget.seeds[1:]]
    return out


def final_runs(budget: Budget, width: int, rows: dict[str, dict]) -> dict[Setting, list[dict]]:
    """Per setting, the rows of every seed at the chosen lr (the figures the claims use)."""
    out = {}
    for s in settings(budget, width):
        lr = select_lr(budget, s, rows)
        if lr is None:
            continue
        got = [rows[k] for k in (s.run(seed, lr).key for seed in budget.seeds) if k in rows]
        if got:
            out[s] = got
    return out


def with_lr(run: Run, lr: float) -> Run:
    return replace(run, lr=lr)
