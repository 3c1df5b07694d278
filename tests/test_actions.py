"""coursekit.data.actions: ActionClips, whose reversed pairs are exactly the same frames in reverse order."""

import numpy as np
import pytest
import torch

from coursekit.data.actions import ACTIONS, REVERSE_PAIRS, ActionClips


def test_shapes_range_determinism_and_balance():
    data = ActionClips(n=16, image_size=32, n_frames=6, seed=3)
    clips, labels = data.tensors()
    assert clips.shape == (16, 6, 3, 32, 32) and clips.dtype == torch.float32
    assert 0 <= clips.min() and clips.max() <= 1
    assert torch.equal(clips[5], ActionClips(n=16, image_size=32, n_frames=6, seed=3)[5][0])
    assert not torch.equal(clips[5], ActionClips(n=16, image_size=32, n_frames=6, seed=4)[5][0])
    assert np.bincount(labels.numpy(), minlength=len(ACTIONS)).tolist() == [2] * len(ACTIONS)
    assert data.num_classes == len(ACTIONS) and "n_frames=6" in repr(data)
    assert torch.equal(data[-1][0], data[15][0])


def test_reversed_action_is_the_forward_clip_played_backwards():
    data = ActionClips(n=8, image_size=40, n_frames=8)
    for forward, backward in REVERSE_PAIRS:
        a = data.render(ACTIONS[forward], np.random.default_rng(7))
        b = data.render(ACTIONS[backward], np.random.default_rng(7))
        assert torch.equal(b, a.flip(0))
        assert not torch.equal(a, a.flip(0))  # the motion is visible: the clip is not a palindrome
        # frames differ (the figure moves) but the background is static
        assert (a[0] - a[-1]).abs().amax(0).gt(0.2).float().mean() > 0.01


def test_bad_input():
    with pytest.raises(ValueError, match="n_frames"):
        ActionClips(n=4, n_frames=2)
    with pytest.raises(ValueError, match="image_size"):
        ActionClips(n=4, image_size=8)
    with pytest.raises(ValueError, match="unknown action"):
        ActionClips(n=4).render("dance", np.random.default_rng(0))
    with pytest.raises(IndexError):
        ActionClips(n=4)[4]
    with pytest.raises(TypeError):
        ActionClips(n=4)[1.0]
