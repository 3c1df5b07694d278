"""coursekit.receptive_field: deck 004's table, and the arithmetic against gradients of real conv stacks."""

import pytest
import torch
from torch import nn

from coursekit.receptive_field import (
    empirical_receptive_field,
    layers_of,
    receptive_field,
    receptive_field_map,
)

DECK_004 = [(5, 2), (3, 1), (7, 3)]


def test_deck_004_table():
    assert receptive_field(DECK_004) == [(2, 5), (2, 9), (6, 21)]
    assert receptive_field([]) == []
    assert receptive_field([(3, 1)] * 4) == [(1, 3), (1, 5), (1, 7), (1, 9)]  # linear in depth
    assert receptive_field([(2, 2)] * 4)[-1] == (16, 16)  # multiplicative with striding
    with pytest.raises(ValueError, match="stride"):
        receptive_field([(3, 0)])


def _deck_stack():
    return nn.Sequential(
        nn.Conv2d(1, 2, 5, 2), nn.ReLU(), nn.Conv2d(2, 2, 3, 1), nn.ReLU(), nn.Conv2d(2, 1, 7, 3)
    )


def test_empirical_matches_deck_table_with_positive_constant_weights():
    net = _deck_stack()
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 0.1)
            nn.init.zeros_(m.bias)
    assert layers_of(net) == DECK_004
    # the measurement after each layer is the table's receptive field
    for depth, (_, rf) in zip((1, 3, 5), receptive_field(DECK_004), strict=True):
        assert empirical_receptive_field(net[:depth], 65) == rf


def _torchvision_like_stack():
    """A ResNet-like stem and a VGG-like block, with BatchNorm, max pooling, padding and a dilated conv."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, padding=2, dilation=2),
    )


def test_empirical_matches_arithmetic_on_a_random_torchvision_like_stack():
    torch.manual_seed(0)
    net = _torchvision_like_stack()  # random weights: the measurement must not depend on them
    layers = layers_of(net)
    assert layers == [(7, 2), (3, 2), (3, 1), (3, 1), (2, 2), (5, 1)]
    expected = receptive_field(layers)[-1][1]
    assert expected == 7 + 2 * 2 + 2 * 4 + 2 * 4 + 1 * 4 + 4 * 8
    assert empirical_receptive_field(net, 160) == expected
    assert net[1].training  # the model itself is left untouched


def test_input_too_small_and_effective_map():
    net = _deck_stack()
    with pytest.raises(ValueError, match="larger input_size"):
        empirical_receptive_field(net, 21)
    torch.manual_seed(1)
    effective = receptive_field_map(net, 65)
    full = receptive_field_map(net, 65, positive=True)
    assert effective.shape == full.shape == (65, 65)
    assert effective.sum() > 0 and (full > 0).sum() == 21 * 21
    # the effective receptive field lies inside the theoretical one
    assert ((effective > 0) & (full == 0)).sum() == 0


def test_layers_of_rejects_non_square_kernels():
    with pytest.raises(ValueError, match="non-square"):
        layers_of(nn.Sequential(nn.Conv2d(1, 1, (3, 5))))
