"""MultiTaskViT: any mix of tasks in one batch gives each row its own task's output (PEFT's mixed-batch test)."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import adaptformer as af
from adaptformer.engine import TaskTable
from tests.support import adapted, clips, images, make_vit, max_diff, wait_until

FRAMES = 4
TOL = 1e-5

# Tasks differing in bottleneck, layers, scale, adapter input, mode and class count (None: linear probe).
TASKS: dict[str, tuple[af.AdapterConfig | None, int]] = {
    "a": (af.AdapterConfig(bottleneck=8), 3),
    "b": (af.AdapterConfig(bottleneck=16, layers="first:2", scale=0.5, adapter_input="raw"), 5),
    "c": (
        af.AdapterConfig(bottleneck=4, layers=[1, -1], learnable_scale=True, adapter_input="own_ln", mode="sequential"),
        2,
    ),
    "d": (af.AdapterConfig(bottleneck=32, layers="last:1", scale=1.0, mode="sequential"), 7),
    "e": (af.AdapterConfig(bottleneck=2, layers=(2,), scale=0.3, mode="sequential", adapter_input="raw"), 4),
    "probe": (None, 6),
}
MIXED = ["a", "probe", "b", "a", "c", "d", "e", "b", "probe", "c", "d", "e", "a"]


def _model(backbone: nn.Module, name: str, seed: int) -> nn.Module:
    """The single-task model of ``name``: random non-zero adapters (or a linear probe) on a copy of ``backbone``."""
    config, classes = TASKS[name]
    if config is None:
        torch.manual_seed(seed)
        return af.linear_probe(copy.deepcopy(backbone), classes).eval()
    return adapted(backbone, config, num_classes=classes, seed=seed)


class Fixture:
    """An engine serving every task in TASKS, with the single-task models they were taken from."""

    def __init__(self, backbone: nn.Module, files: Path, video: bool = False) -> None:
        self.models: dict[str, nn.Module] = {}
        self.engine = af.MultiTaskViT(copy.deepcopy(backbone))
        for seed, name in enumerate(TASKS):
            model = _model(af.video_vit(backbone, FRAMES, 2) if video else backbone, name, seed)
            self.models[name] = model
            if seed % 2:  # half through adapter files, half as TaskAdapters (copies: the engine freezes them)
                self.engine.add_task(name, af.extract_task(copy.deepcopy(model), name))
            else:
                self.engine.add_task(name, af.save_adapter(model, files / f"{name}.safetensors", task=name))

    @torch.no_grad()
    def reference(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """Logits of one input run by its own single-task model."""
        return self.models[task](x.unsqueeze(0))[0]


@pytest.fixture(scope="module")
def image_tasks(backbone: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return Fixture(backbone, tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def clip_tasks(backbone: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return Fixture(backbone, tmp_path_factory.mktemp("clip"), video=True)


def _check_mixed(fx: Fixture, x: torch.Tensor, tasks: list[str]) -> None:
    """Every row of the mixed batch equals that input run alone with its task, and its single-task model."""
    out = fx.engine(x, tasks)
    assert len(out) == len(tasks)
    for i, task in enumerate(tasks):
        assert out[i].shape == (TASKS[task][1],)
        alone = fx.engine(x[i : i + 1], task)[0]
        assert max_diff(out[i], alone) <= TOL, (i, task)
        assert max_diff(out[i], fx.reference(x[i], task)) <= TOL, (i, task)


def test_mixed_image_batch(image_tasks: Fixture) -> None:
    """Images: a batch mixing 6 tasks (incl. a linear probe) gives each row its own task's logits."""
    _check_mixed(image_tasks, images(len(MIXED)), MIXED)


def test_mixed_clip_batch(clip_tasks: Fixture) -> None:
    """Clips [B, T, 3, H, W]: the same, with tasks saved as clip tasks from video models."""
    assert all(t.info.input.modality == "clip" for t in clip_tasks.engine.tasks.values())
    _check_mixed(clip_tasks, clips(len(MIXED), FRAMES), MIXED)


@torch.no_grad()
def test_adapters_matter(image_tasks: Fixture, backbone: nn.Module) -> None:
    """Sanity: each adapter task's output differs from its head on the plain backbone (the test is not vacuous)."""
    x = images(2)
    plain = image_tasks.engine.vit.forward_head(image_tasks.engine.vit.forward_features(x), pre_logits=True)
    for name, task in image_tasks.engine.tasks.items():
        if task.config is not None:
            assert max_diff(torch.stack(image_tasks.engine(x, name)), task.head(plain)) > 1e-3, name


def test_single_task_batch_and_row_order(image_tasks: Fixture) -> None:
    """A whole batch of one task (one name for the batch) equals its model; rows stay in order."""
    x = images(5)
    out = torch.stack(image_tasks.engine(x, "c"))
    with torch.no_grad():
        assert max_diff(out, image_tasks.models["c"](x)) <= TOL


def test_unknown_task_lists_known(image_tasks: Fixture) -> None:
    """An unknown task is a KeyError naming it and listing the known tasks."""
    with pytest.raises(KeyError) as info:
        image_tasks.engine(images(2), ["a", "nope"])
    message = str(info.value)
    assert "nope" in message and all(name in message for name in TASKS)


def test_task_count_must_match_batch(image_tasks: Fixture) -> None:
    """One task name per sample."""
    with pytest.raises(ValueError, match="3 task names"):
        image_tasks.engine(images(2), ["a", "b", "c"])


def test_clip_tasks_with_different_tubelets_refused(backbone: nn.Module, tmp_path: Path) -> None:
    """Clip tasks with different tubelet sizes cannot share a batch; the engine says so."""
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    for tubelet in (1, 2):
        video = adapted(af.video_vit(backbone, FRAMES, tubelet), af.AdapterConfig(bottleneck=4))
        engine.add_task(f"t{tubelet}", af.save_adapter(video, tmp_path / f"t{tubelet}.safetensors", task="t"))
    with pytest.raises(ValueError, match="tubelet"):
        engine(clips(2, FRAMES), ["t1", "t2"])


@torch.no_grad()
def test_add_replace_remove_any_time(backbone: nn.Module, tmp_path: Path) -> None:
    """Tasks come and go between batches; a replaced task serves its new version; removed tasks are unknown."""
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    x = images(4)
    first, second = _model(backbone, "a", seed=0), _model(backbone, "a", seed=5)
    engine.add_task("a", af.save_adapter(first, tmp_path / "a1.safetensors", task="a"))
    assert max_diff(torch.stack(engine(x, "a")), first(x)) <= TOL
    engine.add_task("probe", af.extract_task(_model(backbone, "probe", 1), "probe"))
    assert [o.shape[0] for o in engine(x, ["a", "probe", "probe", "a"])] == [3, 6, 6, 3]
    engine.add_task("a", af.save_adapter(second, tmp_path / "a2.safetensors", task="a"))
    assert max_diff(torch.stack(engine(x, "a")), second(x)) <= TOL
    removed = engine.remove_task("a")
    assert removed.num_classes == 3 and "a" not in engine and "probe" in engine
    with pytest.raises(KeyError, match="probe"):
        engine(x, "a")
    with pytest.raises(KeyError, match="'a'"):
        engine.remove_task("a")
    engine.add_task("a", removed)
    assert max_diff(torch.stack(engine(x, "a")), second(x)) <= TOL


def test_one_task_table_for_library_and_server(image_tasks: Fixture, backbone: nn.Module) -> None:
    """``add_task`` replaces the engine's TaskTable by a new one (the old one, a running batch's, is unchanged);
    a table passed as ``table=`` (a server's per-batch mapping of prepared tasks) runs the same way, and the
    engine's own table is not read then."""
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    empty = engine.tasks
    assert isinstance(empty, TaskTable) and len(empty) == 0
    task = engine.add_task("a", image_tasks.engine.tasks["a"])
    first = engine.tasks
    assert len(empty) == 0 and list(first) == ["a"] and first["a"] is task
    engine.add_task("b", image_tasks.engine.tasks["b"])
    assert list(first) == ["a"] and sorted(engine.tasks) == ["a", "b"]
    x = images(3)
    want = [image_tasks.reference(x[i], t) for i, t in enumerate(["a", "b", "a"])]
    # the server's way: tasks made ready by prepare(), a plain dict per batch, nothing added to the engine
    server = af.MultiTaskViT(copy.deepcopy(backbone))
    prepared = {k: server.prepare(copy.deepcopy(image_tasks.engine.tasks[k])) for k in ("a", "b")}
    for table in (prepared, TaskTable(prepared), engine.tasks):
        out = server(x, ["a", "b", "a"], table=table)
        assert all(max_diff(o, w) <= TOL for o, w in zip(out, want, strict=True))
    assert len(server.tasks) == 0
    with pytest.raises(KeyError, match="unknown task"):
        server(x, "a")  # the engine's own (empty) table when no table is given
    with pytest.raises(KeyError, match="'c'"):
        engine.tasks.without("c")
    assert engine.tasks.without("a") is not engine.tasks and sorted(engine.tasks) == ["a", "b"]


def test_incompatible_task_refused(image_tasks: Fixture) -> None:
    """A task trained on another backbone is refused by add_task and never enters the table."""
    other = _model(make_vit(seed=9), "a", seed=0)
    with pytest.raises(af.IncompatibleAdapterError) as info:
        image_tasks.engine.add_task("alien", af.extract_task(other, "alien"))
    assert info.value.check == "fingerprint"
    assert "alien" not in image_tasks.engine


def test_concurrent_add_remove_while_serving(image_tasks: Fixture, backbone: nn.Module) -> None:
    """One thread adds/removes tasks in a loop while another runs mixed batches: no crash, results stay right, and
    batches do run with the churning task present (each is right) as well as absent (a KeyError naming it)."""
    engine = image_tasks.engine
    extra_model = _model(backbone, "b", seed=11)
    extra = af.extract_task(copy.deepcopy(extra_model), "extra")
    x = images(len(MIXED))
    expected = [image_tasks.reference(x[i], t) for i, t in enumerate(MIXED)]
    with torch.no_grad():
        expected_small = [extra_model(x[0:1])[0], image_tasks.reference(x[1], "a"), extra_model(x[2:3])[0]]
    stop = threading.Event()
    errors: list[BaseException] = []
    churns = 0

    def churn() -> None:
        nonlocal churns
        try:
            while not stop.is_set():
                engine.add_task("extra", extra)
                engine.add_task("b2", image_tasks.engine.tasks["b"])
                engine.remove_task("extra")
                engine.remove_task("b2")
                churns += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    batches = with_extra = without_extra = 0

    def serve_one() -> bool:
        """Runs a mixed batch and a batch with the churning task; true once enough of each kind has run."""
        nonlocal batches, with_extra, without_extra
        assert not errors, errors
        out = engine(x, MIXED)
        assert all(max_diff(o, e) <= TOL for o, e in zip(out, expected, strict=True))
        try:
            out = engine(x[:3], ["extra", "a", "extra"])
        except KeyError as e:
            assert "extra" in str(e), e
            without_extra += 1
        else:
            assert all(max_diff(o, e) <= TOL for o, e in zip(out, expected_small, strict=True))
            with_extra += 1
        batches += 1
        return batches >= 20 and with_extra >= 3 and without_extra >= 3 and churns >= 3

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        wait_until(serve_one, "20 batches, 3 with the churning task and 3 without it, during 3 churns", interval=0)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive() and not errors, errors
    print(f"\n{batches} mixed batches ({with_extra} with the churning task, {without_extra} without) during {churns} "
          "add/remove cycles")  # fmt: skip
    assert set(engine.tasks) == set(TASKS)


def test_add_task_leaves_training_model_alone(backbone: nn.Module) -> None:
    """Serving a task extracted from a model in training does not freeze that model's adapters."""
    model = af.add_adapters(copy.deepcopy(backbone), af.AdapterConfig(bottleneck=4), num_classes=3).train()
    trainable = af.trainable_parameters(model).trainable
    engine = af.MultiTaskViT(copy.deepcopy(backbone))
    engine.add_task("live", af.extract_task(model, "live"))
    assert af.trainable_parameters(model).trainable == trainable
    assert model.training and model.blocks[0].adapter.training
