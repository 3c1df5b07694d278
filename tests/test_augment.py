"""coursekit.data.augment: SimCLR's batched views against torchvision's per-image transforms."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from coursekit.data.augment import SimCLRAugment, two_views


def _images(n=4, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_identity_settings_change_nothing():
    images = _images()
    same = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter=0.0, hue=0.0, grey_p=0.0)
    assert torch.allclose(same(images), images, atol=1e-5)


def test_flip_and_grey_match_torchvision():
    images = _images()
    flip = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, jitter=0.0, hue=0.0, grey_p=0.0)
    assert torch.allclose(flip(images), images.flip(-1), atol=1e-5)
    grey = SimCLRAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter=0.0, hue=0.0, grey_p=1.0)
    expected = TF.rgb_to_grayscale(images, num_output_channels=3)
    assert torch.allclose(grey(images), expected, atol=1e-5)


def test_colour_factors_match_torchvision():
    images = _images()
    aug = SimCLRAugment(jitter_p=1.0, hue=0.0, generator=torch.Generator().manual_seed(1))
    # re-draw the same factors: brightness, (keep mask), contrast, (keep), saturation, (keep)
    g = torch.Generator().manual_seed(1)
    f = []
    for _ in range(3):
        f.append(0.6 + 0.8 * torch.rand(4, generator=g))
        torch.rand(4, generator=g)
    out = aug.colour(images)
    for i in range(4):
        x = TF.adjust_brightness(images[i], float(f[0][i]))
        x = TF.adjust_contrast(x, float(f[1][i]))
        x = TF.adjust_saturation(x, float(f[2][i]))
        if not torch.allclose(out[i], TF.rgb_to_grayscale(x, 3), atol=1e-5):  # unless it was turned grey
            assert torch.allclose(out[i], x, atol=1e-5)


def test_hue_rotation_keeps_greys_and_permutes_channels_at_a_third_of_a_turn():
    images, aug = _images(), SimCLRAugment()
    third = aug.hue_rotation(images, torch.full((4,), 1 / 3))
    assert torch.allclose(third, images[:, [2, 0, 1]], atol=1e-5)  # R -> G -> B
    assert torch.allclose(aug.hue_rotation(images, torch.zeros(4)), images, atol=1e-6)
    grey = images.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    assert torch.allclose(aug.hue_rotation(grey, torch.rand(4)), grey, atol=1e-5)
    # a small rotation is close to torchvision's HSV hue shift (not equal: HSV's hexagon is not a circle)
    assert (aug.hue_rotation(images, torch.full((4,), 0.05)) - TF.adjust_hue(images, 0.05)).abs().mean() < 0.05


def test_views_are_random_reproducible_and_in_range():
    images = _images(8, 32)
    v1, v2 = two_views(images, SimCLRAugment(generator=torch.Generator().manual_seed(0)))
    w1, _ = two_views(images, SimCLRAugment(generator=torch.Generator().manual_seed(0)))
    assert v1.shape == images.shape and torch.equal(v1, w1)
    assert not torch.allclose(v1, v2)
    assert 0 <= v1.min() and v1.max() <= 1


def test_bad_input():
    with pytest.raises(ValueError, match="scale"):
        SimCLRAugment(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="flip_p"):
        SimCLRAugment(flip_p=1.5)
    with pytest.raises(ValueError, match="jitter"):
        SimCLRAugment(jitter=1.0)
    with pytest.raises(ValueError, match="hue"):
        SimCLRAugment(hue=0.7)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        SimCLRAugment()(torch.rand(3, 8, 8))
