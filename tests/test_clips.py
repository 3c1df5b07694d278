"""coursekit.data.clips: tracking clips with a box per frame."""

import pytest
import torch

from coursekit.data.clips import Clips


@pytest.fixture(scope="module")
def clip():
    return Clips(2, n_frames=24, image_size=64, split="test", seed=3)[1]


def test_clip_shapes_and_ranges(clip):
    assert clip["frames"].shape == (24, 3, 64, 64) and clip["frames"].dtype == torch.float32
    assert clip["boxes"].shape == (24, 4) and clip["visible"].shape == (24,)
    assert 0 <= float(clip["frames"].min()) and float(clip["frames"].max()) <= 1
    b = clip["boxes"]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and (b >= 0).all() and (b <= 64).all()
    assert ((clip["visible"] >= 0) & (clip["visible"] <= 1)).all()


def test_clips_are_deterministic_and_splits_differ(clip):
    again = Clips(2, n_frames=24, image_size=64, split="test", seed=3)[1]
    assert torch.equal(again["frames"], clip["frames"]) and torch.equal(again["boxes"], clip["boxes"])
    other = Clips(2, n_frames=24, image_size=64, split="train", seed=3)[1]
    assert not torch.equal(other["frames"], clip["frames"])


def test_the_target_moves_smoothly_and_changes_scale():
    c = Clips(1, n_frames=60, image_size=96, seed=0)[0]
    centre = (c["boxes"][:, :2] + c["boxes"][:, 2:]) / 2
    assert (centre[1:] - centre[:-1]).norm(dim=1).max() < 6  # px per frame
    area = (c["boxes"][:, 2] - c["boxes"][:, 0]) * (c["boxes"][:, 3] - c["boxes"][:, 1])
    assert float(area.max() / area.min()) > 1.1


def test_occlusion_hides_part_of_the_target_somewhere():
    hidden = [float(Clips(6, n_frames=40, image_size=64, seed=1)[i]["visible"].min()) for i in range(6)]
    assert min(hidden) < 0.9
    clear = Clips(2, n_frames=10, image_size=64, occlusion=False)[0]
    assert (clear["visible"] == 1).all()


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="split"):
        Clips(1, split="val")
    with pytest.raises(ValueError, match="n_frames"):
        Clips(1, n_frames=1)
    with pytest.raises(ValueError, match="image_size"):
        Clips(1, image_size=16)
    with pytest.raises(IndexError):
        Clips(2)[2]
