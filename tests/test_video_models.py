"""coursekit.models.video: every registered model's shapes; frame averaging is blind to frame order, the others not."""

import pytest
import torch

from coursekit.models import create_model, list_models
from coursekit.models.video import C3D, FrameAverage, TwoStream


def _inputs(name, B=2, T=8, S=32):
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(B, T, 3, S, S, generator=g)
    return (clip, torch.randn(B, T - 1, 2, S, S, generator=g)) if name == "two_stream" else (clip,)


@pytest.mark.parametrize("name", list_models("video"))
def test_every_model_gives_logits(name):
    model = create_model(name, 5, **({"n_frames": 8} if name == "two_stream" else {})).eval()
    inputs = _inputs(name)
    logits = model(*inputs)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    if name in ("frame_rnn", "c3d"):  # order matters to these
        reversed_logits = model(inputs[0].flip(1))
        assert not torch.allclose(logits, reversed_logits, atol=1e-4)


def test_frame_average_cannot_see_the_direction_of_time():
    model = FrameAverage(4).eval()
    clip = torch.rand(3, 6, 3, 32, 32)
    assert torch.allclose(model(clip), model(clip.flip(1)), atol=1e-5)
    assert torch.allclose(model(clip), model(clip[:, torch.randperm(6)]), atol=1e-5)


def test_c3d_is_a_3d_convolution_over_time():
    model = C3D(3, width=4)
    assert isinstance(model.features[0], torch.nn.Conv3d) and model.features[0].kernel_size == (3, 3, 3)


def test_bad_input():
    with pytest.raises(ValueError, match="choose one of"):
        create_model("i3d", 3)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("c3d", 0)
    with pytest.raises(ValueError, match="frames first"):
        C3D(3)(torch.rand(2, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="flow"):
        TwoStream(3, n_frames=8)(torch.rand(2, 8, 3, 32, 32), torch.rand(2, 8, 2, 32, 32))
    with pytest.raises(ValueError, match="n_frames"):
        TwoStream(3, n_frames=1)
