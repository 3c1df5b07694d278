"""coursekit.ops against torchvision.ops / F: values and gradients, random and edge cases."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvo

from coursekit.ops import (
    bed_of_nails,
    boxes_to_rois,
    checkerboard_demo,
    conv_transpose2d,
    conv_transpose2d_steps,
    max_unpool2d,
    nearest_upsample,
    roi_align,
    roi_pool,
)

TOL = 1e-5


def _random_rois(g, n_images, H, W, scale, k=12):
    """RoIs in image pixels spread over, around and beyond a map of H x W cells."""
    size = torch.tensor([W, H]) / scale
    xy = (torch.rand(k, 2, generator=g) * 1.6 - 0.3) * size  # some start outside the map
    wh = torch.rand(k, 2, generator=g) * size * 0.8
    batch = torch.randint(0, n_images, (k, 1), generator=g).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


def _edge_rois(H, W, scale):
    s = 1 / scale
    return torch.tensor(
        [
            [0, 0, 0, W * s, H * s],  # the whole map
            [1, -5 * s, -5 * s, -1 * s, -1 * s],  # fully outside, above-left
            [0, (W + 2) * s, (H + 2) * s, (W + 9) * s, (H + 9) * s],  # fully outside, below-right
            [1, -3 * s, 1 * s, 2 * s, (H + 4) * s],  # partly outside
            [0, 2 * s, 1 * s, 2 * s, 1 * s],  # zero size
            [1, 1 * s, 1 * s, 2 * s, 2 * s],  # one cell
            [0, 1.5 * s, 0.5 * s, 3.5 * s, 2.5 * s],  # on half cells: rounding half away from zero
            [1, 3 * s, 3 * s, 1 * s, 1 * s],  # x2 < x1: malformed
        ]
    )


ROI_CASES = [((7, 7), 1.0), ((2, 3), 0.25), ((3, 2), 1 / 16), ((1, 1), 1.0), ((4, 4), 0.5)]


@pytest.mark.parametrize("output_size, scale", ROI_CASES)
def test_roi_pool_matches_torchvision(output_size, scale):
    g = torch.Generator().manual_seed(0)
    for H, W in [(9, 13), (1, 5), (16, 16)]:
        x = torch.randn(2, 3, H, W, generator=g)
        rois = torch.cat([_random_rois(g, 2, H, W, scale), _edge_rois(H, W, scale)])
        ours, ref = roi_pool(x, rois, output_size, scale), tvo.roi_pool(x, rois, output_size, scale)
        assert ours.shape == ref.shape == (rois.shape[0], 3, *output_size)
        assert (ours - ref).abs().max() < TOL


@pytest.mark.parametrize("output_size, scale", ROI_CASES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_torchvision(output_size, scale, sampling_ratio, aligned):
    g = torch.Generator().manual_seed(1)
    for H, W in [(9, 13), (1, 5), (16, 16)]:
        x = torch.randn(2, 3, H, W, generator=g)
        rois = torch.cat([_random_rois(g, 2, H, W, scale), _edge_rois(H, W, scale)])
        args = (output_size, scale, sampling_ratio, aligned)
        ours, ref = roi_align(x, rois, *args), tvo.roi_align(x, rois, *args)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() < TOL


def test_roi_align_samples_beyond_minus_one_read_nothing():
    # a RoI straddling the top-left border: samples in [-1, 0] read row/col 0, samples < -1 read 0
    x = torch.arange(16.0).view(1, 1, 4, 4) + 1
    rois = torch.tensor([[0, -3.0, -3.0, 1.0, 1.0]])
    ours = roi_align(x, rois, 4, sampling_ratio=1)
    assert torch.allclose(ours, tvo.roi_align(x, rois, 4, sampling_ratio=1))
    assert ours[0, 0, 0, 0] == 0 and ours[0, 0, 3, 3] > 0


def _grad(op, x, rois, *args):
    x = x.clone().requires_grad_(True)
    out = op(x, rois, *args)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * upstream).sum().backward()
    return x.grad


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_gradients_match_torchvision(scale):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 10, 12, generator=g)
    rois = torch.cat([_random_rois(g, 2, 10, 12, scale), _edge_rois(10, 12, scale)])
    assert (
        _grad(roi_pool, x, rois, (3, 3), scale) - _grad(tvo.roi_pool, x, rois, (3, 3), scale)
    ).abs().max() < TOL
    for aligned in (False, True):
        args = ((4, 3), scale, -1, aligned)
        diff = _grad(roi_align, x, rois, *args) - _grad(tvo.roi_align, x, rois, *args)
        assert diff.abs().max() < TOL


def test_roi_pool_gradient_with_ties_goes_to_the_same_cell():
    # a ReLU-like map of small integers: bins hold many equal maxima; torchvision picks the first (row-major)
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(8)).clamp(min=0).round()
    rois = torch.tensor([[0, 0, 0, 11, 9.0], [1, 2, 1, 8, 7], [0, -3, -2, 5, 4], [1, 3, 3, 3, 3]])
    assert (_grad(roi_pool, x, rois, (3, 3)) - _grad(tvo.roi_pool, x, rois, (3, 3))).abs().max() == 0


def test_roi_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 1.2, 4.7, 5.1], [0, 2.0, 0.0, 6.0, 3.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 2), 1.0, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (2, 2)), (x,))


def test_roi_ops_accept_box_lists_and_empty_input():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 8, generator=g)
    per_image = [
        torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 2.0, 7.0, 5.0]]),
        torch.tensor([[2.0, 2.0, 6.0, 7.0]]),
    ]
    rois = boxes_to_rois(per_image)
    assert rois[:, 0].tolist() == [0, 0, 1]
    for ours, ref in ((roi_pool, tvo.roi_pool), (roi_align, tvo.roi_align)):
        assert torch.allclose(ours(x, per_image, 2), ref(x, per_image, 2), atol=TOL)
        assert torch.allclose(ours(x, per_image, 2), ours(x, rois, 2))
        assert ours(x, torch.zeros(0, 5), (2, 3)).shape == (0, 3, 2, 3)
        assert ours(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


def test_roi_align_removes_the_quantisation_of_roi_pool():
    # a box shifted by a third of a cell: RoI pool rounds it back, RoI align sees the shift
    x = torch.arange(64.0).view(1, 1, 8, 8)
    a, b = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]]), torch.tensor([[0, 1.33, 1.0, 5.33, 5.0]])
    assert torch.equal(roi_pool(x, a, 2), roi_pool(x, b, 2))
    assert not torch.allclose(roi_align(x, a, 2, aligned=True), roi_align(x, b, 2, aligned=True))


def test_roi_bad_input_raises():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_pool(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_align(x, torch.tensor([[1, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(x, torch.zeros(1, 5), 0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        roi_pool(x[0], torch.zeros(1, 5), 2)


CONV_CASES = [
    # (N, Cin, Cout, H, W, kernel, stride, padding, output_padding)
    (2, 3, 4, 5, 7, (3, 3), 1, 0, 0),
    (1, 2, 3, 2, 2, (3, 3), 2, 1, 1),  # deck 002: 2 x 2 -> 4 x 4
    (2, 3, 2, 4, 5, (2, 2), 2, 0, 0),  # stride == kernel: copies tile without overlap
    (1, 2, 2, 3, 4, (2, 3), 4, 0, 3),  # stride > kernel: gaps of zeros
    (2, 1, 3, 5, 3, (5, 4), 3, 2, 1),  # odd sizes, padding, non-square kernel
    (1, 4, 1, 7, 6, (4, 4), 2, 1, 0),  # FCN / DCGAN style 2x upsampling
    (1, 2, 3, 3, 3, (1, 1), 1, 0, 0),
]


@pytest.mark.parametrize("N, Cin, Cout, H, W, kernel, stride, padding, out_pad", CONV_CASES)
def test_conv_transpose2d_matches_torch(N, Cin, Cout, H, W, kernel, stride, padding, out_pad):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(N, Cin, H, W, generator=g, requires_grad=True)
    w = torch.randn(Cin, Cout, *kernel, generator=g, requires_grad=True)
    bias = torch.randn(Cout, generator=g)
    ours = conv_transpose2d(x, w, stride, padding, output_padding=out_pad, bias=bias)
    ref = F.conv_transpose2d(x, w, bias, stride, padding, out_pad)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < TOL
    upstream = torch.randn(ref.shape, generator=g)
    grads = torch.autograd.grad((ours * upstream).sum(), (x, w))
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (x, w))
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(grads, ref_grads, strict=True))


def test_conv_transpose_deck_example_is_2x2_to_4x4_and_copies_are_summed():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    w = torch.ones(1, 1, 3, 3)
    out = conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    assert out.shape == (1, 1, 4, 4)
    # the output pixel under the copies of all four input pixels gets the sum 1 + 2 + 3 + 4
    assert out[0, 0, 1, 1] == 10 and out[0, 0, 0, 0] == 1


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 0), (2, 1), (3, 1)])
def test_conv_transpose2d_steps_ends_at_the_full_result(stride, padding):
    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(3, 4, generator=g), torch.randn(3, 3, generator=g)
    steps = list(conv_transpose2d_steps(x, w, stride, padding))
    assert [(r, c) for r, c, _ in steps] == [(r, c) for r in range(3) for c in range(4)]
    ref = F.conv_transpose2d(x[None, None], w[None, None], stride=stride, padding=padding)[0, 0]
    assert (steps[-1][2] - ref).abs().max() < TOL
    # after the first pixel, the (uncropped) output is one weighted copy of the filter
    if padding == 0:
        assert torch.allclose(steps[0][2][:3, :3], x[0, 0] * w)
        assert steps[0][2][3:].abs().sum() == 0


def test_conv_transpose_bad_input_raises():
    with pytest.raises(ValueError, match=r"\[Cin, Cout, kh, kw\]"):
        conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3), 2, output_padding=2)


def test_nearest_and_bed_of_nails():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 4, 5, generator=g)
    for f in (1, 2, 3):
        assert torch.equal(nearest_upsample(x, f), F.interpolate(x, scale_factor=f, mode="nearest"))
        # bed of nails == transposed conv (per channel) with a filter that is 1 in its top-left corner
        nail = torch.zeros(3, 1, f, f)
        nail[:, :, 0, 0] = 1
        assert torch.equal(bed_of_nails(x, f), F.conv_transpose2d(x, nail, stride=f, groups=3))
    assert bed_of_nails(x, 2)[:, :, 1::2].abs().sum() == 0
    with pytest.raises(ValueError, match="factor"):
        nearest_upsample(x, 0)


@pytest.mark.parametrize(
    "size, kernel, stride, padding", [((6, 8), 2, None, 0), ((7, 9), 3, 2, 1), ((5, 5), 2, 1, 0)]
)
def test_max_unpool2d_matches_torch(size, kernel, stride, padding):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, *size, generator=g)
    pooled, idx = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    ours = max_unpool2d(pooled, idx, kernel, stride, padding=padding, output_size=size)
    ref = F.max_unpool2d(pooled, idx, kernel, stride, padding, output_size=size)
    assert torch.equal(ours, ref)
    # every kept value sits where it came from
    assert torch.equal(ours[ours != 0], x[ours != 0])
    if stride is None:
        assert torch.equal(max_unpool2d(pooled, idx, kernel), F.max_unpool2d(pooled, idx, kernel))
    with pytest.raises(ValueError, match="output_size"):
        max_unpool2d(pooled, idx, kernel, stride, padding=padding, output_size=(2, 2))


def test_checkerboard_demo_counts_overlaps():
    uneven = checkerboard_demo(6, kernel_size=3, stride=2)
    assert set(uneven[2:-2, 2:-2].unique().tolist()) == {1.0, 2.0, 4.0}
    even = checkerboard_demo(6, kernel_size=4, stride=2)
    assert even[2:-2, 2:-2].unique().tolist() == [4.0]
