"""coursekit.metrics.tracking (OTB success plot, AUC, precision) against obvious loops and torchvision's IoU."""

import pytest
import torch
from torchvision.ops import box_iou

from coursekit.metrics.tracking import OTB_THRESHOLDS, centre_errors, overlaps, precision_at, success_auc, success_curve


def _boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = 5 + torch.rand(n, 2, generator=g) * 30
    return torch.cat([xy, xy + wh], 1)


def test_overlaps_are_torchvision_ious_frame_by_frame():
    p, g = _boxes(40, 0), _boxes(40, 1)
    ref = torch.stack([box_iou(p[t : t + 1], g[t : t + 1])[0, 0] for t in range(40)]).double()
    assert torch.allclose(overlaps(p, g), ref, atol=1e-6)


def test_success_curve_and_auc_match_the_otb_definition():
    p, g = _boxes(200, 2), _boxes(200, 3)
    p[:100] = g[:100] + 1.0  # half the frames tracked well
    iou = overlaps(p, g).tolist()
    curve = success_curve(p, g)
    for t, value in zip(OTB_THRESHOLDS.tolist(), curve.tolist()):
        assert value == pytest.approx(sum(o > t for o in iou) / len(iou))
    assert len(curve) == 21 and curve[0] <= 1 and (curve[:-1] >= curve[1:]).all()
    assert success_auc(p, g) == pytest.approx(float(curve.mean()))
    assert success_auc(g, g) == pytest.approx(20 / 21)  # IoU 1 is not > 1: the last threshold never passes


def test_centre_errors_and_precision():
    g = _boxes(10, 4)
    p = g + torch.tensor([3.0, 4.0, 3.0, 4.0])
    assert torch.allclose(centre_errors(p, g), torch.full((10,), 5.0, dtype=torch.float64))
    assert precision_at(p, g, 5.001) == 1.0 and precision_at(p, g, 4.9) == 0.0


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="same length"):
        overlaps(_boxes(3, 0), _boxes(4, 0))
    with pytest.raises(ValueError, match="x2 < x1"):
        success_auc(torch.tensor([[10.0, 0.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, 5.0, 5.0]]))
