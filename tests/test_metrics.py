"""coursekit.metrics segmentation (vs scikit-learn and a slow loop), pose (known values) and PSNR (vs skimage).

The detection metrics are tested against pycocotools in tests/test_metrics_detection.py.
"""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

import coursekit.metrics as M


# ----------------------------------------------------------------------------------------- segmentation
def slow_iou(pred, target, num_classes, ignore_index=None):
    """Per-class IoU the obvious way: one class at a time, sets of pixels."""
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    out = []
    for c in range(num_classes):
        p, t = (pred == c) & keep, (target == c) & keep
        union = (p | t).sum().item()
        out.append((p & t).sum().item() / union if union else math.nan)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(3))
def test_confusion_and_iou_match_references(seed):
    g = torch.Generator().manual_seed(seed)
    C = 5
    target = torch.randint(0, C, (2, 16, 20), generator=g)
    pred = torch.where(torch.rand(2, 16, 20, generator=g) < 0.6, target, torch.randint(0, C, (2, 16, 20), generator=g))
    cm = M.confusion_matrix(pred, target, C)
    expected = sk_confusion_matrix(target.flatten().numpy(), pred.flatten().numpy(), labels=list(range(C)))
    np.testing.assert_array_equal(cm.numpy(), expected)
    torch.testing.assert_close(M.iou_score(pred, target, C), slow_iou(pred, target, C), equal_nan=True)
    assert M.mean_iou(pred, target, C) == pytest.approx(slow_iou(pred, target, C).mean().item())


def test_iou_absent_class_ignore_index_and_single_image():
    target = torch.tensor([[0, 0, 1, 255], [0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 3], [0, 1, 0, 0]])
    # class 0: pred {(0,0),(1,0),(1,2)}, true {(0,0),(0,1),(1,0)} -> 2 / 4; class 1: 2 / 4;
    # class 2 absent from both -> NaN; class 3 predicted only on an ignored pixel -> NaN
    iou = M.iou_score(pred, target, num_classes=4, ignore_index=255)
    torch.testing.assert_close(iou, torch.tensor([0.5, 0.5, math.nan, math.nan], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(iou, slow_iou(pred, target, 4, 255), equal_nan=True)
    assert M.mean_iou(pred, target, 4, ignore_index=255) == pytest.approx(0.5)
    assert M.confusion_matrix(pred, target, 4, ignore_index=255).sum() == 6
    # class 2 predicted but absent -> 0 (a real mistake), class 1 absent from both -> NaN
    iou = M.iou_score(torch.tensor([[2, 0]]), torch.tensor([[0, 0]]), 3)
    assert iou[0] == 0.5 and math.isnan(iou[1]) and iou[2] == 0
    assert math.isnan(M.mean_iou(torch.zeros(1, 2, dtype=torch.long), torch.full((1, 2), 9), 3, ignore_index=9))


def test_segmentation_bad_inputs():
    t = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="argmax"):
        M.iou_score(torch.rand(4, 4), t, 2)
    with pytest.raises(ValueError, match="same shape"):
        M.iou_score(torch.zeros(4, 5, dtype=torch.long), t, 2)
    with pytest.raises(ValueError, match="outside"):
        M.confusion_matrix(torch.full((4, 4), 2), t, 2)
    with pytest.raises(ValueError, match="Tensor\\[H, W\\]"):
        M.mean_iou(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2)


# ----------------------------------------------------------------------------------------- pose
def pose_case():
    """2 people, 3 joints; errors in pixels: person 0 (norm 10): 1, 3, 5; person 1 (norm 20): 2, 8, 30."""
    target = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [3.0, 4.0]], [[2.0, 0.0], [0.0, 8.0], [18.0, 24.0]]])
    visible = torch.tensor([[True, True, True], [True, False, True]])
    return pred, target, visible, torch.tensor([10.0, 20.0])


def test_pck_known_values():
    pred, target, visible, norm = pose_case()
    # scaled errors: person 0: 0.1, 0.3, 0.5; person 1: 0.1, (0.4 invisible), 1.5
    assert M.pck(pred, target, visible, norm, threshold=0.2) == pytest.approx(2 / 5)
    assert M.pck(pred, target, visible, norm, threshold=0.5) == pytest.approx(4 / 5)  # <= counts
    per_joint = M.pck(pred, target, visible, norm, threshold=0.3, per_joint=True)
    torch.testing.assert_close(per_joint, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    # a joint never visible: NaN per joint, left out of the pooled value
    none_visible = visible.clone()
    none_visible[:, 2] = False
    per_joint = M.pck(pred, target, none_visible, norm, threshold=0.2, per_joint=True)
    assert per_joint[0] == 1 and per_joint[1] == 0 and math.isnan(per_joint[2])
    assert M.pck(pred, target, none_visible, 10.0, threshold=0.2) == pytest.approx(2 / 3)  # one norm for all


def test_pck_curve_is_pck_at_each_threshold_and_monotone():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(6, 5, 2, generator=g) * 100
    pred = target + torch.randn(6, 5, 2, generator=g) * 8
    visible = torch.rand(6, 5, generator=g) < 0.8
    norm = torch.rand(6, generator=g) * 40 + 20
    thresholds = torch.linspace(0, 1, 11)
    curve = M.pck_curve(pred, target, visible, norm, thresholds)
    assert curve.shape == (11,) and curve[0] == 0 and curve[-1] <= 1
    assert (curve.diff() >= 0).all()
    for t, value in zip(thresholds.tolist(), curve.tolist(), strict=True):
        assert value == pytest.approx(M.pck(pred, target, visible, norm, threshold=t))
    # the slow way
    dist = ((pred - target) ** 2).sum(-1).sqrt() / norm[:, None]
    assert curve[5].item() == pytest.approx(((dist <= 0.5) & visible).sum().item() / visible.sum().item())
    assert M.pck_curve(pred, target, visible, norm, thresholds, per_joint=True).shape == (11, 5)


def test_pck_bad_inputs():
    pred, target, visible, norm = pose_case()
    with pytest.raises(ValueError, match=r"Tensor\[N, K, 2\]"):
        M.pck(pred[..., :1], target, visible, norm)
    with pytest.raises(ValueError, match="visible"):
        M.pck(pred, target, visible[:, :2], norm)
    with pytest.raises(ValueError, match="norm"):
        M.pck(pred, target, visible, torch.tensor([10.0, 20.0, 30.0]))
    with pytest.raises(ValueError, match="positive"):
        M.pck(pred, target, visible, torch.tensor([10.0, 0.0]))


# ----------------------------------------------------------------------------------------- PSNR
@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 3, 8, 8), (10,)])
def test_psnr_matches_skimage(shape):
    g = torch.Generator().manual_seed(len(shape))
    target = torch.rand(shape, generator=g)
    pred = (target + torch.randn(shape, generator=g) * 0.05).clamp(0, 1)
    expected = peak_signal_noise_ratio(target.double().numpy(), pred.double().numpy(), data_range=1.0)
    assert M.psnr(pred, target) == pytest.approx(expected, rel=1e-12)
    expected = peak_signal_noise_ratio((target * 255).double().numpy(), (pred * 255).double().numpy(), data_range=255)
    assert M.psnr(pred * 255, target * 255, data_range=255) == pytest.approx(expected, rel=1e-9)


def test_psnr_known_values_and_errors():
    target = torch.zeros(4, 4)
    assert M.psnr(target + 0.1, target) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(100)
    assert M.psnr(target, target) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(torch.zeros(3, 4), target)
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(target, target, data_range=0)


def test_public_api():
    for name in M.__all__:
        assert hasattr(M, name), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_take_a_gpu_prediction_against_cpu_ground_truth():
    # Found on a GPU: a DIP output or a student's prediction on CUDA, the clean image or the masks on the CPU.
    g = torch.Generator().manual_seed(0)
    img, ref = torch.rand(3, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)
    assert M.psnr(img.cuda(), ref) == pytest.approx(M.psnr(img, ref))
    pred, target = torch.randint(0, 3, (2, 8, 8), generator=g), torch.randint(0, 3, (2, 8, 8), generator=g)
    assert torch.equal(M.confusion_matrix(pred.cuda(), target, 3), M.confusion_matrix(pred, target, 3))
