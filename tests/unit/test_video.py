"""Video: clips as joint space-time tokens through the same frozen ViT, adapters unchanged."""

from __future__ import annotations

import pytest
import torch

import adaptformer as af
from tests.support import IMG, adapted, clips, images, make_vit, max_diff

PATCHES = (IMG // 8) ** 2  # tiny-custom: 8-pixel patches


@pytest.mark.parametrize("kind", ["tiny-custom", "no-class-token", "registers"])
@torch.no_grad()
def test_token_count_linear_in_frames(kind: str) -> None:
    """Clips [B, T, 3, H, W] run; tokens = T / tubelet * patches + prefix tokens, linear in T."""
    vit = make_vit(kind)
    counts = []
    for frames in (2, 4, 8):
        video = af.video_vit(vit, frames=frames, tubelet=2)
        tokens = video.embed(clips(2, frames))
        assert tokens.shape == (2, video.num_tokens, 64)
        assert video.num_tokens == frames // 2 * PATCHES + vit.num_prefix_tokens
        assert video(clips(2, frames)).shape == (2, 5)
        counts.append(video.num_tokens)
    assert counts[2] - counts[1] == 2 * (counts[1] - counts[0])


@torch.no_grad()
def test_wrong_frame_count_refused() -> None:
    """A clip with another number of frames than the model's is refused with the expected shape."""
    video = af.video_vit(make_vit(), frames=4)
    with pytest.raises(ValueError, match="4"):
        video(clips(1, 6))
    with pytest.raises(ValueError, match="multiple"):
        af.video_vit(make_vit(), frames=3, tubelet=2)


@pytest.mark.parametrize("kind", ["tiny-custom", "layer-scale", "registers"])
@torch.no_grad()
def test_fresh_adapters_change_nothing_on_clips(kind: str) -> None:
    """add_adapters works on a video model the same way; fresh adapters leave its pooled features unchanged."""
    video = af.video_vit(make_vit(kind), frames=4, tubelet=2).eval()
    x = clips(2, 4)
    before = video.forward_head(video.forward_features(x), pre_logits=True)
    af.add_adapters(video, af.AdapterConfig(bottleneck=8), num_classes=6)
    assert sum(isinstance(b, af.AdaptedBlock) for b in video.vit.blocks) == 4
    assert {n for n, p in video.named_parameters() if p.requires_grad} == {
        n for n, _ in video.named_parameters() if ".adapter." in n or n.startswith("vit.head.")
    }
    after = video.forward_head(video.forward_features(x), pre_logits=True)
    assert max_diff(after, before) <= 1e-6
    assert video(x).shape == (2, 6)


SLOTS = [
    pytest.param(2, 2, id="1slot"),
    pytest.param(4, 2, id="2slots-tubelet2"),
    pytest.param(4, 1, id="4slots-tubelet1"),
]


def _still(img: torch.Tensor, frames: int) -> torch.Tensor:
    return img.unsqueeze(1).expand(-1, frames, -1, -1, -1)


@pytest.mark.parametrize("kind", ["tiny-custom", "registers", "no-class-token"])
@pytest.mark.parametrize(("frames", "tubelet"), SLOTS)
@torch.no_grad()
def test_still_clip_embeds_like_the_image(kind: str, frames: int, tubelet: int) -> None:
    """A clip of one repeated frame gives, in every time slot, the image's patch embedding (before positions)."""
    vit = make_vit(kind)
    vit.pos_embed.zero_()  # leaves the patch embedding alone (the time code is scaled by the spatial RMS: 0)
    video = af.video_vit(vit, frames=frames, tubelet=tubelet)
    img = images(2)
    tokens = video.embed(_still(img, frames))[:, vit.num_prefix_tokens :]
    slots = tokens.reshape(2, video.time_slots, PATCHES, 64)  # time-major, as VideoViT documents
    patches = vit.patch_embed(img)
    for t in range(video.time_slots):
        assert max_diff(slots[:, t], patches) <= 1e-5


@pytest.mark.parametrize(("frames", "tubelet"), SLOTS)
@torch.no_grad()
def test_still_clip_tokens_carry_their_patch_position(frames: int, tubelet: int) -> None:
    """With positions: slot tokens = image patch tokens + that patch's spatial position + one code per slot."""
    vit = make_vit()
    video = af.video_vit(vit, frames=frames, tubelet=tubelet)
    img = images(2)
    tokens = video.embed(_still(img, frames))[:, 1:].reshape(2, video.time_slots, PATCHES, 64)
    image_tokens = vit.patch_embed(img) + vit.pos_embed[:, 1:]
    for t in range(video.time_slots):
        time_code = tokens[:, t] - image_tokens  # must not depend on the patch
        assert max_diff(time_code, time_code[:, :1].expand_as(time_code)) <= 1e-5


@torch.no_grad()
def test_time_slots_get_distinct_positions() -> None:
    """With positions on, the same frame at different times gives different tokens (the model sees time)."""
    video = af.video_vit(make_vit(), frames=4, tubelet=2)
    still = images(1).unsqueeze(1).expand(-1, 4, -1, -1, -1)
    slots = video.embed(still)[:, 1:].reshape(1, 2, PATCHES, 64)
    assert max_diff(slots[:, 0], slots[:, 1]) > 1e-3


def test_video_fingerprint_equals_image_vit() -> None:
    """A video model shares its image ViT's weights, so adapter files of both name the same backbone."""
    vit = make_vit()
    fp = af.backbone_fingerprint(vit)
    video = af.video_vit(vit, frames=4)
    assert af.backbone_fingerprint(video) == fp
    assert af.backbone_fingerprint(adapted(video, af.AdapterConfig(bottleneck=4))) == fp
