"""Single-object tracking metrics, the OTB protocol (Wu, Lim and Yang, 2013): success plot and its AUC.

For every frame, the overlap (IoU) of the predicted box with the ground truth. The **success plot** is
the share of frames whose overlap exceeds a threshold, for thresholds 0 to 1 (OTB: 21 of them, step
0.05); its **area under the curve** (AUC, the mean of those 21 values) ranks trackers. The
**precision plot** does the same with the distance between box centres (OTB reports it at 20 px).
Notebook 10 (SiamFC against template matching).
"""

from __future__ import annotations

import torch
from torch import Tensor

from coursekit.boxes import box_iou, check_boxes

__all__ = ["OTB_THRESHOLDS", "overlaps", "success_curve", "success_auc", "centre_errors", "precision_at"]

OTB_THRESHOLDS = torch.linspace(0, 1, 21, dtype=torch.float64)  # overlap thresholds of OTB's success plot


def _check_pair(pred: Tensor, gt: Tensor) -> None:
    check_boxes(pred, "pred")
    check_boxes(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must be Tensor[T, 4] of the same length (one box per frame), "
                         f"got {tuple(pred.shape)} and {tuple(gt.shape)}")


def overlaps(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU of each frame's predicted box with its ground truth: pred, gt (Tensor[T, 4] xyxy) -> float64 Tensor[T]."""
    _check_pair(pred, gt)
    # The course's one IoU (coursekit.boxes); the diagonal pairs frame t with frame t. T is a few thousand
    # frames at most, so the T x T matrix is cheap.
    return box_iou(pred.double(), gt.double()).diagonal().nan_to_num(0.0)  # an empty union: overlap 0


def success_curve(pred: Tensor, gt: Tensor, thresholds: Tensor = OTB_THRESHOLDS) -> Tensor:
    """Share of frames whose overlap is **greater than** each threshold (OTB) -> float64 Tensor[len(thresholds)].

    ``pred`` and ``gt`` may hold the frames of several clips concatenated: OTB pools all frames.
    """
    iou = overlaps(pred, gt)
    return (iou[None, :] > thresholds.double()[:, None]).double().mean(1)


def success_auc(pred: Tensor, gt: Tensor) -> float:
    """Area under the success plot: the mean of :func:`success_curve` over OTB's 21 thresholds."""
    return float(success_curve(pred, gt).mean())


def centre_errors(pred: Tensor, gt: Tensor) -> Tensor:
    """Distance in pixels between the centres of predicted and true boxes -> float64 Tensor[T]."""
    _check_pair(pred, gt)
    centre = lambda b: (b[:, :2] + b[:, 2:]).double() / 2
    return (centre(pred) - centre(gt)).norm(dim=1)


def precision_at(pred: Tensor, gt: Tensor, pixels: float = 20.0) -> float:
    """OTB's precision: the share of frames whose centre error is at most ``pixels``."""
    return float((centre_errors(pred, gt) <= pixels).double().mean())
