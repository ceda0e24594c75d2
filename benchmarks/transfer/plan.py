"""What the study trains: budgets (epochs, data sizes, grids) and the list of runs they imply."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from adaptformer.config import AdapterConfig
from adaptformer.train import TrainConfig

__all__ = ["BUDGETS", "DEPTH", "Budget", "Run", "main_runs", "phase_one", "phase_two"]

DEPTH = 6  # blocks of the embedded backbone: "6 adapted layers" is "all"


RECIPE = {
    "optimizer": "adamw",
    "lr": 5e-3,
    "weight_decay": 1e-4,
    "warmup_epochs": 1.0,
    "batch_size": 64,
    "schedule": "linear warmup, then cosine to zero",
}


@dataclass(frozen=True)
class Budget:
    """Epochs, data sizes and the grids of each ablation. One recipe for every method."""

    name: str
    seeds: tuple[int, ...]
    epochs: dict[str, int]
    train_limit: dict[str, int | None]
    val_limit: dict[str, int | None]
    frames: tuple[int, ...]
    main_frames: int
    vpt_tokens: tuple[int, ...]
    bottlenecks: tuple[int, ...]
    parallel_layers: tuple[int, ...]
    sequential_layers: tuple[int, ...]
    scales: tuple[float, ...]
    tasks: tuple[str, ...] = ("digits", "emoji", "motion")
    sweep_task: str = "digits"
    recipe: dict = field(default_factory=lambda: dict(RECIPE))

    def describe(self) -> str:
        sizes = ", ".join(
            f"{t}: {self.epochs[t]} epochs, {_n(self.train_limit[t])} train / {_n(self.val_limit[t])} val"
            for t in self.tasks
        )
        r = self.recipe
        return (
            f"AdamW, lr {r['lr']:g} ({r['schedule']}, {r['warmup_epochs']:g} warmup epoch), weight decay "
            f"{r['weight_decay']:g}, batch {r['batch_size']}, no augmentation beyond the data set's own, the same "
            f"for every method; {sizes}; clips {self.main_frames} frames unless said, tubelet 2; seeds "
            f"{', '.join(map(str, self.seeds))} (the seed sets initialisation and order; the data split is fixed)"
        )


def _n(limit: int | None) -> str:
    return "all" if limit is None else f"≤{limit:,}"


FULL = Budget(
    name="full",
    seeds=(0, 1, 2),
    epochs={"digits": 10, "emoji": 6, "motion": 8},
    train_limit={"digits": None, "emoji": 1200, "motion": 500},
    val_limit={"digits": None, "emoji": None, "motion": 500},
    frames=(2, 4, 8),
    main_frames=8,
    vpt_tokens=(1, 2, 4, 8, 16, 32, 64),
    bottlenecks=(1, 4, 16, 64, 256),
    parallel_layers=(1, 2, 4, 6),
    sequential_layers=(2, 6),
    scales=(0.01, 0.05, 0.1, 0.2, 0.5, 1.0),
)

QUICK = Budget(
    name="quick",
    seeds=(0,),
    epochs={"digits": 1, "emoji": 1, "motion": 1},
    train_limit={"digits": 64, "emoji": 64, "motion": 32},
    val_limit={"digits": 64, "emoji": 64, "motion": 32},
    frames=(2, 4),
    main_frames=4,
    vpt_tokens=(1, 8),
    bottlenecks=(1, 64),
    parallel_layers=(1, 6),
    sequential_layers=(6,),
    scales=(0.1, 1.0),
)

BUDGETS = {"full": FULL, "quick": QUICK}


@dataclass(frozen=True)
class Run:
    """One training run. Knobs that do not apply to the method keep their defaults, so equal runs compare equal."""

    task: str
    method: str
    seed: int
    frames: int = 1
    bottleneck: int = 64
    scale: float = 0.1
    learnable_scale: bool = False
    layers: int = 0  # adapted blocks counted from the first; 0 = all
    mode: str = "parallel"
    adapter_input: str = "ln"
    prompt_tokens: int = 0

    @property
    def setting(self) -> str:
        """Everything but the seed: the key that runs of different seeds share."""
        d = asdict(self)
        d.pop("seed")
        return json.dumps(d, sort_keys=True)

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def train_config(self, budget: Budget) -> TrainConfig:
        r = budget.recipe
        adapter = AdapterConfig(
            bottleneck=self.bottleneck, scale=self.scale, learnable_scale=self.learnable_scale,
            layers=f"first:{self.layers}" if self.layers else "all", mode=self.mode,  # type: ignore[arg-type]
            adapter_input=self.adapter_input,  # type: ignore[arg-type]
        )  # fmt: skip
        return TrainConfig(
            method=self.method, adapter=adapter, prompt_tokens=max(self.prompt_tokens, 1), vpt_deep=True,
            epochs=budget.epochs[self.task], batch_size=r["batch_size"], lr=r["lr"],
            weight_decay=r["weight_decay"], warmup_epochs=r["warmup_epochs"], optimizer=r["optimizer"],
            seed=self.seed, device="cpu", eval_every=budget.epochs[self.task],
        )  # fmt: skip


def adaptformer(task: str, seed: int = 0, frames: int = 1, **knobs) -> Run:
    return Run(task, "adaptformer", seed, frames, **knobs)


def vpt(task: str, tokens: int, seed: int = 0, frames: int = 1) -> Run:
    return Run(task, "vpt", seed, frames, prompt_tokens=tokens)


def main_runs(budget: Budget, task: str, vpt_tokens: int, seed: int = 0, frames: int | None = None) -> dict[str, Run]:
    """The four methods of the main comparison on one task (VPT at ``vpt_tokens``)."""
    f = (budget.main_frames if frames is None else frames) if task == "motion" else 1
    return {
        "linear": Run(task, "linear", seed, f),
        "vpt": vpt(task, vpt_tokens, seed, f),
        "adaptformer": adaptformer(task, seed, f),
        "full": Run(task, "full", seed, f),
    }


def _dedup(runs: list[Run]) -> list[Run]:
    return list(dict.fromkeys(runs))


def phase_one(budget: Budget) -> list[Run]:
    """Every run that does not depend on VPT's best token count; the VPT sweep first, as phase two waits on it."""
    t = budget.sweep_task
    runs: list[Run] = []
    for seed in budget.seeds:
        runs += [vpt(t, n, seed) for n in budget.vpt_tokens]
    for seed in budget.seeds:
        for task in budget.tasks:
            frames = budget.frames if task == "motion" else (1,)
            for f in frames:
                m = main_runs(budget, task, 0, seed, f)
                runs += [m["linear"], m["adaptformer"], m["full"]]
            runs.append(replace(main_runs(budget, task, 0, seed)["adaptformer"], adapter_input="raw"))
        runs += [adaptformer(t, seed, bottleneck=d) for d in budget.bottlenecks]
        runs += [adaptformer(t, seed, layers=k % DEPTH) for k in budget.parallel_layers]
        runs += [adaptformer(t, seed, layers=k % DEPTH, mode="sequential") for k in budget.sequential_layers]
        runs += [adaptformer(t, seed, scale=s) for s in budget.scales]
        runs.append(adaptformer(t, seed, learnable_scale=True))
    # Longest first (clips, many frames) keeps both workers busy to the end.
    return _dedup(runs[: len(budget.seeds) * len(budget.vpt_tokens)]) + sorted(
        _dedup(runs[len(budget.seeds) * len(budget.vpt_tokens) :]), key=lambda r: -r.frames
    )


def phase_two(budget: Budget, best_tokens: int) -> list[Run]:
    """VPT at its best token count (from the sweep) on the other tasks and every frame count."""
    runs = []
    for seed in budget.seeds:
        for task in budget.tasks:
            for f in budget.frames if task == "motion" else (1,):
                runs.append(main_runs(budget, task, best_tokens, seed, f)["vpt"])
    return sorted(_dedup(runs), key=lambda r: -r.frames)
