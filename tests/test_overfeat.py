"""Tests for coursekit.models.overfeat: fc_to_conv equivalence, the conv net == the window loop."""

import pytest
import torch
from torch import nn

from coursekit.models.overfeat import (
    FullyConvOverFeat,
    SlidingWindows,
    fc_to_conv,
    feature_stride,
    overfeat_lenet,
    overfeat_net,
)
from coursekit.sliding import sliding_window_scores


def _deck_002_head() -> nn.Sequential:
    # 16x5x5 -> 400 -> 120 -> 84 -> 10 (LeNet-5's dense layers, deck 002)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)
    )


def test_fc_to_conv_builds_the_decks_layers():
    conv = fc_to_conv(_deck_002_head(), (16, 5, 5))
    kinds = [
        (type(m).__name__, getattr(m, "kernel_size", None), getattr(m, "out_channels", None)) for m in conv
    ]
    assert kinds == [
        ("Conv2d", (5, 5), 120),
        ("ReLU", None, None),
        ("Conv2d", (1, 1), 84),
        ("ReLU", None, None),
        ("Conv2d", (1, 1), 10),
    ]


def test_fc_to_conv_on_a_window_equals_the_dense_head():
    torch.manual_seed(0)
    head = _deck_002_head()
    conv = fc_to_conv(head, (16, 5, 5))
    x = torch.randn(4, 16, 5, 5)
    out = conv(x)
    assert out.shape == (4, 10, 1, 1)
    assert (out[:, :, 0, 0] - head(x)).abs().max() < 1e-5


def test_fc_to_conv_on_a_larger_map_equals_the_head_at_every_position():
    torch.manual_seed(1)
    head = _deck_002_head()
    conv = fc_to_conv(head, (16, 5, 5))
    x = torch.randn(2, 16, 9, 7)
    out = conv(x)  # (2, 10, 5, 3)
    assert out.shape == (2, 10, 5, 3)
    expected = torch.stack(
        [torch.stack([head(x[:, :, i : i + 5, j : j + 5]) for j in range(3)], dim=-1) for i in range(5)],
        dim=-2,
    )
    assert (out - expected).abs().max() < 1e-5


def test_fc_to_conv_copies_and_leaves_the_head_alone():
    head = _deck_002_head()
    before = head[1].weight.clone()
    conv = fc_to_conv(head, (16, 5, 5))
    with torch.no_grad():
        conv[0].weight.zero_()
    assert torch.equal(head[1].weight, before)


def test_fc_to_conv_rejects_bad_heads():
    with pytest.raises(ValueError, match="in_shape"):
        fc_to_conv(_deck_002_head(), (16, 4, 4))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        fc_to_conv(nn.Sequential(nn.Flatten(), nn.Linear(400, 8), nn.BatchNorm1d(8)), (16, 5, 5))


def test_feature_stride():
    assert overfeat_lenet().stride == 4
    assert overfeat_net().stride == 8
    assert feature_stride(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.MaxPool2d(3))) == 6


@pytest.mark.parametrize("padding", [0, 6])
def test_conv_net_equals_the_loop_over_windows_at_the_net_stride(padding):
    torch.manual_seed(2)
    net = overfeat_lenet(num_classes=11).eval()
    conv = net.to_fully_convolutional(padding=padding)
    assert isinstance(conv, FullyConvOverFeat)
    image = torch.rand(3, 57, 45)
    logits, boxes = conv(image[None])
    loop_logits, loop_boxes = sliding_window_scores(net, image, 32, net.stride, padding, batch_size=7)
    rows, cols = (57 + 2 * padding - 32) // 4 + 1, (45 + 2 * padding - 32) // 4 + 1
    assert logits.shape == (1, 11, rows, cols) and boxes.shape == (1, 4, rows, cols)
    assert (logits[0] - loop_logits).abs().max() < 1e-5
    assert (boxes[0] - loop_boxes).abs().max() < 1e-5


def test_deck_002_net_gives_25x25_or_32x32_with_padding_28_and_matches_the_loop():
    torch.manual_seed(3)
    net = overfeat_net(window=64, channels=(4, 8, 8), hidden=16).eval()
    image = torch.rand(1, 3, 256, 256)
    assert net.to_fully_convolutional()(image)[0].shape[-2:] == (25, 25)
    conv_logits, _ = net.to_fully_convolutional(padding=28)(image)
    loop_logits, _ = SlidingWindows(net, padding=28, batch_size=256)(image)
    assert conv_logits.shape == loop_logits.shape == (1, 2, 32, 32)
    assert (conv_logits - loop_logits).abs().max() < 1e-5


def test_overfeat_rejects_a_whole_image():
    with pytest.raises(ValueError, match="to_fully_convolutional"):
        overfeat_lenet()(torch.rand(1, 3, 64, 64))


def test_classifier_only_net():
    net = overfeat_lenet(num_classes=2, in_channels=1, regress=False).eval()
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    assert net.to_fully_convolutional()(torch.rand(1, 1, 40, 36)).shape == (1, 2, 3, 2)
