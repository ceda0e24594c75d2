"""Engine paths (slices, gathered, grouped): mixed batches equal each task alone, in float32 and bfloat16, and
the gathered paths' operator count does not grow with the number of tasks in a batch."""

from __future__ import annotations

import copy
import gc
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import adaptformer as af
from adaptformer.engine import PATHS
from adaptformer.gathered import grouped_mm_works
from adaptformer.layer import run_block
from adaptformer.model import image_tokens
from tests.support import adapted, clips, images, make_vit, max_diff

FRAMES = 4
PATH_NAMES = [p for p in PATHS if p != "auto"]
# float32: the folded scale/LayerNorm affine only reorders roundings. bfloat16 (8-bit mantissa): logits of the
# tiny models reach about 2; a mixed row and its task alone differ by a few bfloat16 steps at most, and the
# bfloat16 engine stays within 0.05 of the float32 one (the stated tolerance of half precision).
TOL = {torch.float32: 2e-5, torch.bfloat16: 0.05}
HALF_VS_FLOAT = 0.05

INPUTS = [("parallel", "ln"), ("parallel", "raw"), ("parallel", "own_ln"), ("sequential", "raw"), ("sequential", "ln")]
LAYERS: list[str | tuple[int, ...]] = ["all", "first:2", "last:1", (1, 3), (0,)]


def _config(k: int) -> af.AdapterConfig | None:
    """Task ``k``'s branches: every 9th is a linear probe; the others cycle d^, layers, scale, input and mode."""
    if k % 9 == 8:
        return None
    mode, source = INPUTS[k % len(INPUTS)]
    return af.AdapterConfig(
        bottleneck=(2, 4, 8, 16, 5, 32)[k % 6],
        layers=LAYERS[(k // 2) % len(LAYERS)],
        scale=0.1 + 0.05 * (k % 7),
        learnable_scale=k % 4 == 3,
        mode=mode,
        adapter_input=source,
    )


def _tasks(backbone: nn.Module, count: int, video: bool = False) -> dict[str, af.TaskAdapter]:
    base = af.video_vit(backbone, FRAMES, 2) if video else backbone
    out = {}
    for k in range(count):
        config, classes = _config(k), 2 + k % 7
        if config is None:
            torch.manual_seed(k)
            model = af.linear_probe(copy.deepcopy(base), classes).eval()
        else:
            model = adapted(base, config, num_classes=classes, seed=k)
        out[f"t{k}"] = af.extract_task(model, f"t{k}")
    return out


@pytest.fixture(scope="module")
def image_tasks(backbone: nn.Module) -> dict[str, af.TaskAdapter]:
    return _tasks(backbone, 64)


@pytest.fixture(scope="module")
def clip_tasks(backbone: nn.Module) -> dict[str, af.TaskAdapter]:
    return _tasks(backbone, 16, video=True)


def _engine(backbone: nn.Module, tasks: dict[str, af.TaskAdapter], path: str, dtype: torch.dtype) -> af.MultiTaskViT:
    engine = af.MultiTaskViT(copy.deepcopy(backbone), path=path).to(dtype=dtype)
    for name, task in tasks.items():
        engine.add_task(name, task)
    return engine


def _rows(count: int, batch: int) -> list[str]:
    """``batch`` rows cycling over ``count`` tasks, shuffled (a fixed permutation)."""
    names = [f"t{i % count}" for i in range(batch)]
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(count)).tolist()
    return [names[p] for p in perm]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize(("count", "video"), [(1, False), (16, False), (64, False), (1, True), (16, True)])
def test_mixed_batch_equals_each_task_alone(
    backbone: nn.Module,
    image_tasks: dict[str, af.TaskAdapter],
    clip_tasks: dict[str, af.TaskAdapter],
    path: str,
    dtype: torch.dtype,
    count: int,
    video: bool,
) -> None:
    """Every row of a batch mixing ``count`` tasks equals that input run alone with its task on the slice path."""
    tasks = clip_tasks if video else image_tasks
    batch = max(count + count // 4, 3)  # some tasks get two rows
    names = _rows(count, batch)
    x = clips(batch, FRAMES) if video else images(batch)
    engine = _engine(backbone, tasks, path, dtype)
    alone = _engine(backbone, tasks, "slices", dtype)
    out = engine(x, names)
    for i, name in enumerate(names):
        assert out[i].dtype == dtype and out[i].shape == (tasks[name].num_classes,)
        ref = alone(x[i : i + 1], name)[0]
        assert max_diff(out[i].float(), ref.float()) <= TOL[dtype], (i, name)


@pytest.mark.parametrize("kind", ["no-class-token", "registers", "layer-scale"])
def test_other_backbones_every_path(kind: str) -> None:
    """Backbones without a class token (transposed token layout), with registers or layer scale: every path
    gives each row of a 16-task mix its task's logits alone."""
    backbone = make_vit(kind)
    tasks = _tasks(backbone, 16)
    names = _rows(16, 20)
    x = images(20)
    alone = _engine(backbone, tasks, "slices", torch.float32)
    want = [alone(x[i : i + 1], name)[0] for i, name in enumerate(names)]
    for path in PATH_NAMES:
        out = _engine(backbone, tasks, path, torch.float32)(x, names)
        assert max(max_diff(o, w) for o, w in zip(out, want, strict=True)) <= TOL[torch.float32], path


@pytest.mark.parametrize("kind", ["plain", "no-class-token", "registers", "layer-scale"])
def test_run_block_is_the_timm_block(kind: str) -> None:
    """The one block function both paths use equals timm's own ``Block.forward`` when it adds no branch, and hands
    ``add`` the block's x', LN2(x') and MLP output."""
    backbone = make_vit() if kind == "plain" else make_vit(kind)
    x = image_tokens(backbone, images(3))
    seen: list[torch.Tensor] = []

    def add(out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        seen[:] = inputs
        return out

    for block in backbone.blocks:
        with torch.no_grad():
            got, want = run_block(block, x, add), block(x)
            mid = x + block.ls1(block.attn(block.norm1(x)))
        assert max_diff(got, want) <= 1e-6
        assert max_diff(seen[0], mid) <= 1e-6 and max_diff(seen[1], block.norm2(mid)) <= 1e-6
        assert max_diff(seen[2], want - mid) <= 1e-5
        x = want


@pytest.mark.parametrize("path", PATH_NAMES)
def test_bfloat16_logits_equal_float32(backbone: nn.Module, image_tasks: dict[str, af.TaskAdapter], path: str) -> None:
    """The bfloat16 engine's logits equal the float32 engine's within the stated tolerance."""
    names = _rows(16, 24)
    x = images(24)
    half = _engine(backbone, image_tasks, path, torch.bfloat16)(x, names)
    full = _engine(backbone, image_tasks, path, torch.float32)(x, names)
    worst = max(max_diff(h.float(), f) for h, f in zip(half, full, strict=True))
    assert worst <= HALF_VS_FLOAT, worst


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators one call dispatches that launch work (views and aliases launch none)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view and func.overloadpacket not in _NO_KERNEL:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


_NO_KERNEL = {torch.ops.aten.detach_, torch.ops.aten.lift_fresh}


def _op_count(engine: af.MultiTaskViT, x: torch.Tensor, names: list[str]) -> int:
    engine(x, names)  # the bank writes new tasks on their first batch, not on later ones
    with _CountOps() as counter:
        engine(x, names)
    return sum(counter.ops.values())


@pytest.mark.parametrize("path", ["gathered", "grouped"])
def test_op_count_does_not_grow_with_tasks(
    backbone: nn.Module, image_tasks: dict[str, af.TaskAdapter], path: str
) -> None:
    """One forward of 64 tasks mixed dispatches at most the operators of one task plus a constant.

    The constant covers the kinds of branch input (at most five, each a LayerNorm and a product pair with its
    ReLU per block, whatever the number of tasks) and the per-batch index transfers; the slice path, for
    contrast, grows with tasks x blocks.
    """
    if path == "grouped" and not grouped_mm_works(torch.device("cpu"), torch.float32):
        pytest.skip("torch._grouped_mm does not run on this CPU build")
    depth = len(backbone.blocks)
    engine = _engine(backbone, image_tasks, path, torch.float32)
    x = images(64)
    one = _op_count(engine, x, ["t0"] * 64)
    sixteen = _op_count(engine, x, _rows(16, 64))
    sixty_four = _op_count(engine, x, _rows(64, 64))
    extra_kinds = len(INPUTS) - 1
    assert sixty_four == sixteen  # both batches hold every kind of branch input
    assert sixty_four <= one + extra_kinds * 6 * depth + 10, (one, sixty_four)
    slices = _engine(backbone, image_tasks, "slices", torch.float32)
    assert _op_count(slices, x, _rows(64, 64)) > _op_count(slices, x, ["t0"] * 64) + 64 * depth
    print(f"\n{path}: {one} operators with 1 task, {sixteen} with 16, {sixty_four} with 64 (depth {depth})")


def test_bank_is_built_once_per_task_set(backbone: nn.Module, image_tasks: dict[str, af.TaskAdapter]) -> None:
    """Batches over tasks already in the bank gather only; a replaced task gets a slot of its own, and the old
    one's slot is freed once nothing holds it."""
    engine = _engine(backbone, image_tasks, "gathered", torch.float32)
    x = images(16)
    names = _rows(16, 16)
    engine(x, names)
    bank = engine._bank()
    down, used = bank.down, bank.slots_used
    engine(x, list(reversed(names)))
    assert bank.down is down and bank.slots_used == used == 16
    old = engine.tasks["t1"]
    engine.add_task("t1", copy.deepcopy(image_tasks["t2"]))  # replaced: a new TaskAdapter object
    out = engine(x, names)
    ref = _engine(backbone, {"t1": image_tasks["t2"]}, "slices", torch.float32)
    for i, name in enumerate(names):
        if name == "t1":
            assert max_diff(out[i], ref(x[i : i + 1], "t1")[0]) <= TOL[torch.float32]
    assert bank.slots_used == 17 and old is not engine.tasks["t1"]
    del old  # nobody holds the replaced task any more: its slot is freed at the next batch
    gc.collect()
    engine(x, names)
    assert bank.slots_used == 16


def test_bank_evicts_least_recently_used(backbone: nn.Module, image_tasks: dict[str, af.TaskAdapter]) -> None:
    """Past its slot limit the bank reuses the slots of tasks the batch does not need; answers stay right."""
    engine = _engine(backbone, image_tasks, "gathered", torch.float32)
    alone = _engine(backbone, image_tasks, "slices", torch.float32)
    engine(images(2), ["t0", "t1"])
    engine._bank().max_slots = 8
    x = images(8)
    for start in (0, 8, 16, 0):
        names = [f"t{start + k}" for k in range(8)]
        out = engine(x, names)
        for i, name in enumerate(names):
            assert max_diff(out[i], alone(x[i : i + 1], name)[0]) <= TOL[torch.float32], name
    assert engine._bank().slots_used <= 8


def test_auto_path_and_unknown_path(backbone: nn.Module) -> None:
    """On a CPU ``auto`` takes the slice path whatever the tasks (the paths measure alike there); a path name
    that does not exist (``segments`` among them, removed) is a ValueError listing the valid ones, at
    construction and when set later."""
    for name in ("fast", "segments"):
        with pytest.raises(ValueError, match=rf"unknown engine path '{name}'; valid paths: auto, slices, gathered, "):
            af.MultiTaskViT(copy.deepcopy(backbone), path=name)
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    with pytest.raises(ValueError, match="valid paths: auto, slices, gathered, grouped"):
        engine.path = "segments"
    assert engine.path == "auto"
    cpu = torch.device("cpu")
    tasks = _tasks(backbone, 33)
    for names in (["t0", "t0"], ["t0", "t1"], [f"t{k}" for k in range(18)], [f"t{k}" for k in range(33)], ["t8"]):
        assert engine.choose_path(af.engine._plan(names, tasks), cpu, torch.float32) == "slices", len(names)
    for path in PATH_NAMES:  # a forced path is taken (grouped only where torch._grouped_mm runs)
        engine.path = path
        want = "gathered" if path == "grouped" and not grouped_mm_works(cpu, torch.float32) else path
        assert engine.choose_path(af.engine._plan(["t0", "t1"], tasks), cpu, torch.float32) == want


def test_auto_path_on_cuda_keeps_the_kernel_count_rule(backbone: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA ``auto`` takes slices for one task with branches, and from two on grouped where
    ``torch._grouped_mm`` has a native kernel that agrees with a plain product, else gathered (the device
    capability and the probe are stood in for: no GPU here)."""
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    cuda = torch.device("cuda", 0)
    tasks = _tasks(backbone, 9)  # t8 is a linear probe

    def chosen(names: list[str]) -> str:
        return engine.choose_path(af.engine._plan(names, tasks), cuda, torch.bfloat16)

    for native, works, want in ((True, True, "grouped"), (False, True, "gathered"), (True, False, "gathered")):
        monkeypatch.setattr(af.engine, "_native_grouped_mm", lambda d, t, n=native: n)
        monkeypatch.setattr(af.engine, "grouped_mm_works", lambda d, t, w=works: w)
        assert chosen(["t0", "t0", "t8"]) == "slices" and chosen(["t8"]) == "slices"
        assert chosen(["t0", "t1"]) == want and chosen([f"t{k}" for k in range(9)]) == want
