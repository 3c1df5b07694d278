"""Semantic segmentation metrics: confusion matrix, per-class IoU and mean IoU (notebook 06).

Inputs are integer label maps: ``pred`` and ``target`` Tensor[N, H, W] or Tensor[H, W] with values
in ``[0, num_classes)`` (take ``logits.argmax(1)`` of a network's Tensor[N, C, H, W] output first).
Pixels whose target equals ``ignore_index`` (VOC marks object borders with 255) are left out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "iou_score", "mean_iou"]


def _check_label_maps(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None) -> Tensor:
    """Validate the inputs; return the mask of pixels to count (target != ignore_index)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, Tensor) or x.is_floating_point() or x.is_complex():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be an integer label map (e.g. logits.argmax(1)), got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must have the same shape")
    if pred.dim() not in (2, 3):
        raise ValueError(f"label maps must be Tensor[H, W] or Tensor[N, H, W], got {list(pred.shape)}")
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    for name, x in (("pred", pred[keep.to(pred.device)]), ("target", target[keep])):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(
                f"{name} has labels outside [0, {num_classes}): min {int(x.min())}, max {int(x.max())}; "
                "check num_classes or pass ignore_index"
            )
    return keep


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Pixel counts Tensor[C, C] int64: entry [i, j] = pixels of true class i predicted as j.

    Rows are the truth, columns the prediction (scikit-learn's convention). One ``bincount`` of
    ``target * C + pred`` counts every pixel at once.
    """
    keep = _check_label_maps(pred, target, num_classes, ignore_index)
    pred = pred.to(target.device)  # a GPU prediction against CPU ground truth is counted where the truth is
    codes = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(codes, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_score(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Per-class intersection over union Tensor[C] float64, over all pixels of all images together.

    IoU_c = TP / (TP + FP + FN) from the confusion matrix; NaN for a class absent from both ``pred`` and
    ``target`` (0/0: nothing to get right or wrong), 0 for a class predicted but absent, or missed.
    """
    cm = confusion_matrix(pred, target, num_classes, ignore_index).double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp  # predicted as c, or truly c
    return tp / union  # 0 / 0 -> NaN on purpose


def mean_iou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean of :func:`iou_score` over the classes present in pred or target (NaNs skipped); NaN if none."""
    iou = iou_score(pred, target, num_classes, ignore_index)
    return float(iou.nanmean()) if not iou.isnan().all() else math.nan
