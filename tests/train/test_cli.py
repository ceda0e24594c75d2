"""The `adaptformer` command: a train -> inspect -> eval round trip, and one-line messages for user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from adaptformer.adapter_file import load_adapter
from adaptformer.cli import main
from adaptformer.data.sources import BUILTIN_NOTES
from adaptformer.embedded import build_embedded
from adaptformer.train import TrainConfig, is_small, small_data_recipe


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights for the embedded architecture (tests never depend on the shipped file)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "embedded.safetensors"
    save_file({k: v.contiguous() for k, v in build_embedded().state_dict().items()}, str(path))
    return path


def run_error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    message = str(exc.value.code)
    assert message.startswith("adaptformer: error: "), message
    assert "\n" not in message and "Traceback" not in message
    return message


def image_tree(root: Path, classes: dict[str, int], size: int = 12) -> Path:
    for i, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new("RGB", (size, size), (40 * i, 7 * j, 90)).save(root / name / f"{j}.png")
    return root


def test_train_inspect_eval_round_trip(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "digits.safetensors"
    main(["train", "--task", "digits", "--data", "digits", "--limit", "64", "--epochs", "1", "--bottleneck", "8",
          "--weights", str(weights), "--out", str(out), "--quiet"])  # fmt: skip
    assert out.exists()
    summary = json.loads((tmp_path / "digits.metrics.json").read_text())
    assert summary["servable"] and summary["labels"] == [str(i) for i in range(10)]
    assert 0.0 <= summary["metrics"]["val_top1"] <= 1.0
    capsys.readouterr()

    main(["inspect", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "digits" and info["method"] == "adaptformer" and info["config"]["bottleneck"] == 8
    assert 0 < info["percent_of_backbone"] < 10
    # a built-in source says what the task answers and what its callers must send
    assert (info["description"], info["input_note"]) == BUILTIN_NOTES["digits"]

    main(["eval", "--adapter", str(out), "--data", "digits", "--limit", "64", "--weights", str(weights)])
    result = json.loads(capsys.readouterr().out)
    # The serving engine reproduces the accuracy measured at the end of training on the same split.
    assert result["top1"] == pytest.approx(summary["metrics"]["val_top1"], abs=1e-4)


def test_description_and_input_note_flags_reach_the_file(tmp_path: Path, weights: Path) -> None:
    out = tmp_path / "ink.safetensors"
    main(["train", "--task", "ink", "--data", "digits", "--limit", "32", "--epochs", "1", "--method", "linear",
          "--description", "digit written in ink", "--input-note", "black ink on white paper",
          "--weights", str(weights), "--out", str(out), "--quiet"])  # fmt: skip
    info = load_adapter(out).info
    assert (info.description, info.input_note) == ("digit written in ink", "black ink on white paper")


def test_vpt_gives_a_checkpoint_that_inspect_marks_not_servable(tmp_path: Path, weights: Path, capsys) -> None:
    out = tmp_path / "vpt.safetensors"
    main(["train", "--task", "d", "--data", "digits", "--limit", "32", "--epochs", "1", "--method", "vpt",
          "--weights", str(weights), "--out", str(out), "--quiet"])  # fmt: skip
    capsys.readouterr()
    main(["inspect", str(out), "--json"])
    assert json.loads(capsys.readouterr().out)["servable"].startswith("no")
    main(["eval", "--adapter", str(out), "--data", "digits", "--limit", "32", "--weights", str(weights)])
    assert json.loads(capsys.readouterr().out)["method"] == "vpt"
    # a checkpoint holding a tensor the rebuilt model lacks is refused by name, not with a bare KeyError
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file({**state, "stray.weight": torch.zeros(2)}, str(out), metadata=meta)
    message = run_error(["eval", "--adapter", str(out), "--data", "digits", "--limit", "32", "--weights", str(weights)])
    assert "stray.weight" in message and "do not fit" in message


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: root.mkdir() or root, "empty"),
        (lambda root: image_tree(root, {"only": 3}), "one class"),
        (lambda root: root / "missing", "not found"),
    ],
)
def test_data_errors_are_one_line(tmp_path: Path, weights: Path, make, expected: str) -> None:
    root = make(tmp_path / "data")
    message = run_error(["train", "--task", "t", "--data", str(root), "--weights", str(weights), "--quiet"])
    assert expected in message.lower()


def test_unreadable_image_names_the_file(tmp_path: Path, weights: Path) -> None:
    root = image_tree(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    message = run_error(["train", "--task", "t", "--data", str(root), "--weights", str(weights), "--quiet"])
    assert "broken.png" in message


def test_mismatched_clip_frames(tmp_path: Path, weights: Path) -> None:
    root = tmp_path / "clips"
    for cls, n in (("a", 3), ("b", 5)):
        clip = root / cls / "clip0"
        clip.mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (8, 8), (k * 10, 0, 0)).save(clip / f"{k}.png")
    message = run_error(["train", "--task", "t", "--data", str(root), "--weights", str(weights), "--quiet"])
    assert "frame" in message.lower()


def test_a_small_set_gets_the_small_data_recipe_but_flags_given_win(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture
) -> None:
    """At most 200 training examples per class: d^=16, s=0.5, 20 epochs, batch 16 (the server's job defaults) in
    place of TrainConfig's 64, 0.1, 10 and 64; a flag on the command line keeps its value, abbreviated or not."""
    out = tmp_path / "d.safetensors"
    main(["train", "--task", "d", "--data", "digits", "--limit", "40", "--epochs", "1", "--scal", "0.2",
          "--weights", str(weights), "--out", str(out), "--quiet"])  # fmt: skip
    assert "small-data recipe (d^=16, s=0.2, 1 epochs, batch 16" in capsys.readouterr().out
    recipe = json.loads((tmp_path / "d.metrics.json").read_text())["recipe"]
    assert (recipe["epochs"], recipe["batch_size"]) == (1, 16)
    assert (recipe["adapter"]["bottleneck"], recipe["adapter"]["scale"]) == (16, 0.2)
    assert is_small(200 * 10, 10) and not is_small(200 * 10 + 1, 10)
    cfg = small_data_recipe(TrainConfig(), keep={"adapter.bottleneck"})
    assert (cfg.epochs, cfg.batch_size, cfg.adapter.bottleneck, cfg.adapter.scale) == (20, 16, 64, 0.5)


def test_unknown_backbone_and_bad_knobs() -> None:
    assert "unknown backbone" in run_error(["train", "--task", "t", "--data", "digits", "--backbone", "nope_vit"])
    assert "bottleneck" in run_error(["train", "--task", "t", "--data", "digits", "--bottleneck", "0"])
    assert "not found" in run_error(["inspect", "/nonexistent/file.safetensors"])


def test_train_flags_are_generated_from_the_configs() -> None:
    """Every AdapterConfig and TrainConfig field is a flag with help; the flags' defaults are the configs'."""
    import argparse
    import dataclasses

    from adaptformer.cli import _config, build_parser
    from adaptformer.config import AdapterConfig
    from adaptformer.train import TrainConfig

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    flags = {a.dest: a for a in train._actions}
    for cls in (AdapterConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name != "adapter":
                action = flags.get(f.name) or flags[f"no_{f.name}"]
                assert action.help, f.name
    args = train.parse_args(["--task", "t", "--data", "digits"])
    assert _config(TrainConfig, args, adapter=_config(AdapterConfig, args)) == TrainConfig()
    args = train.parse_args(["--task", "t", "--data", "digits", "--layers", "0,2", "--no-amp", "--optimizer", "sgd",
                             "--bottleneck", "8", "--vpt-deep", "--eval-every", "3"])  # fmt: skip
    cfg = _config(TrainConfig, args, adapter=_config(AdapterConfig, args))
    assert (cfg.adapter.layers, cfg.adapter.bottleneck, cfg.amp, cfg.optimizer, cfg.vpt_deep, cfg.eval_every) == (
        (0, 2), 8, False, "sgd", True, 3
    )  # fmt: skip
    with pytest.raises(SystemExit):
        train.parse_args(["--task", "t", "--data", "digits", "--mode", "serial"])
