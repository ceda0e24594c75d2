"""Clip augmentation keeps the label true and is reproducible for a seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from adaptformer.data.augment import clip_augment
from adaptformer.data.motion import MOTION_DIRECTIONS, MOTION_LABELS


def _moving(label: str, n: int = 6, frames: int = 8, size: int = 32) -> torch.Tensor:
    """Clips of a smooth random picture moving 2 px per frame in the direction ``label``."""
    rng = np.random.default_rng(0)
    dx, dy = MOTION_DIRECTIONS[label]
    out = []
    for _ in range(n):
        pic = torch.from_numpy(rng.standard_normal((3, 2 * size, 2 * size))).float()
        pic = torch.nn.functional.avg_pool2d(pic[None], 5, 1, 2)[0]
        out.append(
            torch.stack([torch.roll(pic, (2 * dy * t, 2 * dx * t), (1, 2))[:, :size, :size] for t in range(frames)])
        )
    return torch.stack(out)


def _direction(clip: torch.Tensor) -> tuple[int, int]:
    """The shift (dx, dy) in -3..3 px that best maps each frame onto the next, summed over the clip."""
    best, score = (0, 0), float("inf")
    for sx in range(-3, 4):
        for sy in range(-3, 4):
            e = sum(
                float((torch.roll(a, (sy, sx), (1, 2)) - b)[:, 4:-4, 4:-4].pow(2).mean())
                for a, b in itertools.pairwise(clip)
            )
            if e < score:
                best, score = (sx, sy), e
    return best


@pytest.mark.parametrize("label", ["right", "left", "up-left", "down"])
def test_augmented_clips_still_move_in_their_direction(label: str) -> None:
    """No flip, no reversal: the content moves the way the label says (never the opposite way)."""
    x = _moving(label)
    aug = clip_augment(x, torch.Generator().manual_seed(3))
    dx, dy = MOTION_DIRECTIONS[label]
    for clip in aug:
        sx, sy = _direction(clip)
        assert (np.sign(sx), np.sign(sy)) == (dx, dy) or (sx, sy) == (0, 0)  # (0, 0): a repeated frame everywhere
    assert aug.shape == x.shape and not torch.equal(aug, x)
    assert MOTION_LABELS  # the directions above are the source's own


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    x = torch.randn(4, 8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = clip_augment(x, torch.Generator().manual_seed(1))
    b = clip_augment(x, torch.Generator().manual_seed(1))
    c = clip_augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_on_by_default_for_clips_and_the_flag_turns_it_off() -> None:
    """The recipe augments clips unless told not to; `adaptformer train --no-clip-augment` turns it off."""
    from adaptformer.train import TrainConfig

    assert TrainConfig().clip_augment is True
    assert TrainConfig(clip_augment=False).clip_augment is False
    from adaptformer.cli import build_parser

    args = build_parser().parse_args(["train", "--task", "t", "--data", "motion", "--no-clip-augment"])
    assert args.no_clip_augment is True


def test_bad_input_refused() -> None:
    with pytest.raises(ValueError, match="clips"):
        clip_augment(torch.zeros(2, 3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="min_speed"):
        clip_augment(torch.zeros(1, 2, 3, 8, 8), torch.Generator(), min_speed=0)


def test_train_help_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from adaptformer.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--no-clip-augment" in help_text and "low, proj" in " ".join(help_text.split())
