"""Stacked hourglass: shapes, the recursion, intermediate-supervision wiring, gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coursekit.models.hourglass import Hourglass, Residual, StackedHourglass, stacked_hourglass


def _tiny(stacks: int, joints: int = 5) -> StackedHourglass:
    torch.manual_seed(0)
    model = StackedHourglass(num_stacks=stacks, num_joints=joints, channels=8, depth=2).eval()
    for head in model.heads:  # the heads start at zero; random ones let gradients show the wiring
        nn.init.normal_(head.weight, std=0.5)
    return model


def test_a_fresh_network_predicts_all_zero_heatmaps():
    out = StackedHourglass(num_stacks=2, num_joints=3, channels=8, depth=2)(torch.rand(2, 3, 32, 32))
    assert all((o == 0).all() for o in out)


@pytest.mark.parametrize("stacks", [1, 2, 4])
def test_output_is_one_heatmap_tensor_per_stack_at_a_quarter_of_the_input(stacks):
    out = _tiny(stacks)(torch.rand(2, 3, 32, 48))
    assert isinstance(out, list) and len(out) == stacks
    assert all(o.shape == (2, 5, 8, 12) for o in out)


def test_stem_stride_two_gives_half_resolution_heatmaps():
    torch.manual_seed(0)
    model = StackedHourglass(num_stacks=2, num_joints=3, channels=8, depth=2, stem_stride=2).eval()
    assert [o.shape for o in model(torch.rand(1, 3, 16, 24))] == [(1, 3, 8, 12)] * 2
    with pytest.raises(ValueError, match="stem_stride"):
        StackedHourglass(stem_stride=8)


def test_intermediate_supervision_remaps_only_between_stacks():
    model = _tiny(4)
    assert len(model.remap_features) == len(model.remap_heatmaps) == 3
    assert model.remap_heatmaps[0].in_channels == 5  # heatmaps -> 1x1 conv -> C channels
    assert model.remap_heatmaps[0].out_channels == 8


def test_residual_adds_its_input_and_projects_when_channels_change():
    block = Residual(4, 4).eval()
    nn.init.zeros_(block.body[-1].weight)
    nn.init.zeros_(block.body[-1].bias)
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(block(x), x)  # body silenced: only the identity path is left
    assert Residual(4, 6)(x).shape == (1, 6, 6, 6)


def _unrolled(hg: Hourglass, x: torch.Tensor) -> torch.Tensor:
    """The figure written out level by level, with maxpool / repeat_interleave as the obvious reference."""
    skip = hg.skip(x)
    low = hg.down(F.max_pool2d(x, kernel_size=2, stride=2))
    low = _unrolled(hg.inner, low) if isinstance(hg.inner, Hourglass) else hg.inner(low)
    up = hg.up(low).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # nearest neighbour
    return skip + up


def test_hourglass_recursion_matches_the_unrolled_figure():
    torch.manual_seed(0)
    hg = Hourglass(depth=3, channels=6).eval()
    levels, module = 0, hg
    while isinstance(module, Hourglass):
        levels, module = levels + 1, module.inner
    assert levels == 3 and isinstance(module, Residual)
    x = torch.randn(2, 6, 16, 16)
    out = hg(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _unrolled(hg, x))


def test_every_stack_depends_on_the_input():
    model = _tiny(3)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    for s, o in enumerate(model(x)):
        (grad,) = torch.autograd.grad(o.sum(), x, retain_graph=True)
        assert grad.abs().sum() > 0, f"stack {s} ignores the image"
    y = x.detach().clone()
    y[..., :16, :] = 0  # a changed image changes every stack's heatmaps
    for a, b in zip(model(x), model(y), strict=True):
        assert not torch.allclose(a, b)


def test_the_last_loss_reaches_the_first_stack():
    model = _tiny(2).train()
    out = model(torch.rand(2, 3, 32, 32))
    F.mse_loss(out[-1], torch.rand_like(out[-1])).backward()
    for name, module in (("stem", model.stem), ("first hourglass", model.hourglasses[0]),
                         ("first head", model.heads[0])):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    # and the first stack's own loss does not reach the second stack
    model.zero_grad()
    model(torch.rand(2, 3, 32, 32))[0].sum().backward()
    assert all(p.grad is None for p in model.hourglasses[1].parameters())


def test_bad_input_size_names_the_size_to_use():
    with pytest.raises(ValueError, match="32x32"):
        _tiny(1)(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="num_stacks"):
        StackedHourglass(num_stacks=0)
    with pytest.raises(ValueError, match="depth"):
        Hourglass(0, 8)


def test_named_sizes_and_unknown_name():
    model = stacked_hourglass(2, 15, "tiny")
    assert model(torch.rand(1, 3, 64, 64))[-1].shape == (1, 15, 16, 16)
    with pytest.raises(ValueError, match="tiny"):
        stacked_hourglass(2, 15, "huge")
