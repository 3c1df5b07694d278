"""Detection metrics: COCO mean average precision (boxes and masks) and PASCAL VOC AP.

Taught in notebook 05 (mAP, VOC vs COCO) and used in notebook 07 (box AP and mask AP of Mask R-CNN).

:func:`mean_average_precision` re-implements pycocotools' ``COCOeval`` from scratch, vectorised over
images, classes, area ranges and IoU thresholds (numpy inside, tensors in and out), and returns the same
numbers, several times faster (``tests/test_metrics_detection.py`` checks them to 1e-6 against pycocotools
on random and edge cases; :mod:`coursekit.benchmark` times both). The COCO protocol, step by step:

1. For every (image, class): sort the detections by score (ties keep input order), keep the top
   ``max_detections`` and compute their IoU with the ground truth (GT) boxes or masks.
2. Greedy matching, for each IoU threshold t in 0.50:0.05:0.95 separately: each detection, best score
   first, takes the still-unmatched GT with the highest IoU >= t. GTs that are "ignored" (crowd, or
   outside the area range being evaluated) are only taken when no regular GT qualifies; a detection
   matched to an ignored GT, or unmatched and itself outside the area range, counts neither as a
   true nor a false positive.
3. Per class, all images together: sort the detections by score, cumulate TP and FP, get the
   precision/recall curve, make precision non-increasing, read it at the 101 recall thresholds
   0:0.01:1 and average: that is the AP of one class at one IoU threshold.
4. ``map`` averages over IoU thresholds and classes. Classes with no GT get -1 and are left out of
   every mean, like pycocotools; a mean over nothing is -1.

Area ranges (``area_from``): by default (``"iou_type"``) the size of what is scored: the box area for
``iou_type="bbox"``, the mask's pixel count for ``"segm"``, so "AP small" of boxes means small *boxes*.
``area_from="target"`` takes ``target["area"]`` when given, COCO's protocol (a COCO annotation's area is
its mask area, used for the box metric too, and the course's datasets fill ``area`` the same way), e.g.
to reproduce numbers computed on COCO json files. Detections use their box area / mask pixel count, as
pycocotools' ``loadRes`` does. small: area <= 32**2, medium: 32**2 <= area <=
96**2, large: area >= 96**2 (both ends inclusive, as in pycocotools).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from coursekit.boxes import box_inter_union, check_boxes

__all__ = [
    "IouType",
    "AREA_RANGES",
    "CocoEvaluation",
    "evaluate_detections",
    "mean_average_precision",
    "voc_ap",
    "mask_iou",
    "AreaFrom",
    "AREA_FROM",
    "pycocotools_map",
]

IouType = Literal["bbox", "segm"]
IOU_TYPES: tuple[str, ...] = get_args(IouType)

AreaFrom = Literal["iou_type", "target"]
AREA_FROM: tuple[str, ...] = get_args(AreaFrom)  # see the module docstring: what "small" is measured on
# pycocotools' area ranges, in pixels**2: name -> (low, high), both inclusive.
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
# Exactly pycocotools' float64 grids (np.linspace): using float32 here shifts AP by up to ~3e-3.
_DEFAULT_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# pycocotools caps the IoU threshold just below 1 so that a perfect match (IoU == 1) always counts.
_MAX_IOU_THRESHOLD = 1 - 1e-10


# --------------------------------------------------------------------------- input checks
def _check_entry(entry: object, i: int, kind: str, iou_type: str) -> int:
    """Validate ``preds[i]`` / ``targets[i]``; return its number of objects."""
    where = f"{kind}[{i}]"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict with 'boxes', 'labels'... got {type(entry).__name__}")
    needed = ["labels", "scores"] if kind == "preds" else ["labels"]
    needed += ["boxes"] if iou_type == "bbox" else ["masks"]
    for key in needed:
        if key not in entry:
            hint = " (segm evaluation needs masks: Tensor[N, H, W] bool/uint8)" if key == "masks" else ""
            raise ValueError(f"{where} has no {key!r} entry{hint}")
    labels = entry["labels"]
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"{where}['labels'] must be an integer Tensor[N], got {_describe(labels)}")
    n = labels.shape[0]
    if iou_type == "bbox":
        check_boxes(entry["boxes"], f"{where}['boxes']")
    else:
        _check_masks(entry["masks"], f"{where}['masks']")
    for key in ("boxes", "masks", "scores", "iscrowd", "area"):
        value = entry.get(key)
        if value is None or (key == "boxes" and iou_type == "segm"):
            continue
        if not isinstance(value, Tensor) or value.shape[:1] != (n,):
            raise ValueError(f"{where}[{key!r}] must have {n} entries like 'labels', got {_describe(value)}")
    if "scores" in needed and (entry["scores"].dim() != 1 or not entry["scores"].is_floating_point()):
        raise ValueError(f"{where}['scores'] must be a float Tensor[N], got {_describe(entry['scores'])}")
    return n


def _check_masks(masks: object, name: str) -> None:
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise ValueError(f"{name} must be a Tensor[N, H, W], got {_describe(masks)}")
    if masks.is_floating_point():
        raise ValueError(
            f"{name} must be bool or uint8, got {masks.dtype}; threshold probabilities first "
            "(Mask R-CNN: (output['masks'] > 0.5).squeeze(1))"
        )


def _describe(x: object) -> str:
    return f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _check_inputs(preds: Sequence, targets: Sequence, iou_type: str, max_detections: int) -> None:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"unknown iou_type={iou_type!r}; choose one of {IOU_TYPES}")
    if not isinstance(preds, Sequence) or not isinstance(targets, Sequence):
        raise ValueError("preds and targets must be lists with one dict per image")
    if len(preds) != len(targets):
        raise ValueError(f"preds has {len(preds)} images but targets has {len(targets)}; give one dict each")
    if not isinstance(max_detections, int) or max_detections < 10:
        raise ValueError(f"max_detections must be an int >= 10 (COCO uses 100), got {max_detections!r}")
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        _check_entry(pred, i, "preds", iou_type)
        _check_entry(target, i, "targets", iou_type)
        if iou_type == "segm" and len(pred["masks"]) and len(target["masks"]):
            if pred["masks"].shape[1:] != target["masks"].shape[1:]:
                raise ValueError(
                    f"preds[{i}]['masks'] is {list(pred['masks'].shape[1:])} but targets[{i}]['masks'] is "
                    f"{list(target['masks'].shape[1:])}; masks of one image must have the same H, W"
                )


# --------------------------------------------------------------------------- IoU per image
def _box_iou_crowd(det: Tensor, gt: Tensor, crowd: Tensor) -> Tensor:
    """IoU of xyxy float64 boxes Tensor[D, 4] x Tensor[G, 4] -> Tensor[D, G], as pycocotools computes it.

    No +1 on widths; touching or empty boxes give 0 (not 0/0); for a crowd GT the "union" is the
    detection's own area (a detection inside a crowd region is a perfect match).
    """
    inter, union = box_inter_union(det, gt)  # (D, G)
    area_d = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    union = torch.where(crowd[None, :], area_d[:, None], union)
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def _np_masks(masks: Tensor) -> np.ndarray:
    """Tensor[N, H, W] bool/uint8 -> Array[N, H, W] bool (no copy for a bool CPU tensor; numpy keeps mask
    work on one thread)."""
    masks = masks.detach().cpu()
    return masks.numpy() if masks.dtype == torch.bool else masks.numpy() != 0


def _mask_extents(masks: np.ndarray) -> np.ndarray:
    """Array[N, H, W] bool -> Array[N, 4] int64: ``(y0, y1, x0, x1)`` of each mask's pixels, all 0 if empty."""
    N, H, W = masks.shape
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)
    extents = np.stack([rows.argmax(1), H - rows[:, ::-1].argmax(1), cols.argmax(1), W - cols[:, ::-1].argmax(1)], 1)
    extents[~rows.any(1)] = 0
    return extents


def _mask_inter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels shared by every pair of masks: Array[N, H, W] x Array[M, H, W] bool -> Array[N, M] float64.

    Only pairs whose extents overlap are counted, and only inside that overlap: at COCO's mask sizes
    (~400 px) most pairs never touch, and the pixels outside a mask's box are all zero anyway.
    """
    ea, eb = _mask_extents(a), _mask_extents(b)
    y0, y1 = np.maximum(ea[:, None, 0], eb[None, :, 0]), np.minimum(ea[:, None, 1], eb[None, :, 1])  # (N, M)
    x0, x1 = np.maximum(ea[:, None, 2], eb[None, :, 2]), np.minimum(ea[:, None, 3], eb[None, :, 3])
    inter = np.zeros((len(a), len(b)))
    for i, j in zip(*np.nonzero((y1 > y0) & (x1 > x0)), strict=True):
        window = (slice(y0[i, j], y1[i, j]), slice(x0[i, j], x1[i, j]))
        inter[i, j] = np.count_nonzero(a[i][window] & b[j][window])
    return inter


def _mask_areas(masks: np.ndarray) -> np.ndarray:
    # one count_nonzero per mask: with axis= numpy sums through a slow path (4x slower at 400 px)
    return np.array([np.count_nonzero(m) for m in masks], dtype=np.float64)


def mask_iou(masks1: Tensor, masks2: Tensor) -> Tensor:
    """IoU of every pair of instance masks: Tensor[N, H, W] x Tensor[M, H, W] (bool / 0-1) -> Tensor[N, M]
    float64. Two empty masks give 0. The mask counterpart of :func:`coursekit.boxes.box_iou`; for matching
    pairs take ``mask_iou(a, b).diagonal()``. Used by the segm mAP below (with COCO's crowd rule)."""
    if masks1.dim() != 3 or masks2.dim() != 3 or masks1.shape[1:] != masks2.shape[1:]:
        raise ValueError(
            f"need masks [N, H, W] and [M, H, W] of one size, got {list(masks1.shape)} and {list(masks2.shape)}"
        )
    a, b = _np_masks(masks1), _np_masks(masks2)
    inter = _mask_inter(a, b)
    union = _mask_areas(a)[:, None] + _mask_areas(b)[None, :] - inter
    return torch.from_numpy(np.where(inter > 0, inter / np.maximum(union, 1), 0.0))


def _mask_iou_crowd(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of binary masks Array[D, H, W] x Array[G, H, W] bool -> Array[D, G] float64, as pycocotools:
    empty masks give 0, crowd GTs use the detection's area as the union."""
    inter = _mask_inter(det, gt)  # (D, G)
    area_d, area_g = _mask_areas(det), _mask_areas(gt)
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - inter)
    return np.where(inter > 0, inter / np.maximum(union, 1), 0.0)


def _areas(entry: Mapping, iou_type: str, use_given: bool) -> np.ndarray:
    """Float64 areas used for the small/medium/large split (see the module docstring)."""
    if use_given and entry.get("area") is not None:
        return entry["area"].detach().cpu().double().numpy()
    if iou_type == "segm":
        return _mask_areas(_np_masks(entry["masks"]))
    boxes = entry["boxes"].detach().cpu().double()
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()


# --------------------------------------------------------------------------- flatten and group
# The bookkeeping below runs in numpy: its arrays are small and its operations many, and numpy never
# spreads one small operation over threads (torch does, which on a busy 2-core machine made this 20x slower).
@dataclass
class _Objects:
    """All detections (or all GTs) of the data set, flattened: one entry per object."""

    image: np.ndarray  # (N,) int64 image index
    label: np.ndarray  # (N,) int64 class label
    local: np.ndarray  # (N,) int64 index of the object inside its image
    area: np.ndarray  # (N,) float64
    score: np.ndarray  # (N,) float64 (GT: zeros)
    crowd: np.ndarray  # (N,) bool (detections: False)


def _flatten(entries: Sequence[Mapping], iou_type: str, is_pred: bool, area_from: str = "iou_type") -> _Objects:
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "label", "local", "area", "score", "crowd")}
    for i, e in enumerate(entries):
        n = len(e["labels"])
        crowd = None if is_pred else e.get("iscrowd")
        cols["image"].append(np.full(n, i, dtype=np.int64))
        cols["label"].append(e["labels"].detach().cpu().long().numpy())
        cols["local"].append(np.arange(n))
        cols["area"].append(_areas(e, iou_type, use_given=not is_pred and area_from == "target"))
        cols["score"].append(e["scores"].detach().cpu().double().numpy() if is_pred else np.zeros(n))
        cols["crowd"].append(np.zeros(n, dtype=bool) if crowd is None else crowd.detach().cpu().bool().numpy())
    return _Objects(**{k: np.concatenate(v) for k, v in cols.items()})


def _group_ranks(keys: np.ndarray) -> np.ndarray:
    """For keys already sorted (equal keys adjacent): the rank of each entry inside its group."""
    position = np.arange(len(keys))
    is_start = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, dtype=bool)
    return position - np.maximum.accumulate(np.where(is_start, position, 0)) if len(keys) else position


def _padded_slots(order: np.ndarray, keys: np.ndarray, pair_keys: np.ndarray) -> np.ndarray:
    """Object indices laid out as Array[P, max per pair], -1 where a pair has fewer objects.

    ``order`` lists the objects grouped by pair (``keys`` sorted), in the order each pair uses them.
    """
    ranks = _group_ranks(keys)
    slots = np.full((len(pair_keys), ranks.max() + 1 if len(ranks) else 0), -1, dtype=np.int64)
    slots[np.searchsorted(pair_keys, keys), ranks] = order
    return slots


def _group(objects: _Objects, classes: np.ndarray, by_score: bool, max_per_pair: int | None):
    """Sort objects by (image, class) pair key [then best score first]; returns (order, keys)."""
    order = np.argsort(-objects.score, kind="stable") if by_score else np.arange(len(objects.image))
    keys = objects.image[order] * len(classes) + np.searchsorted(classes, objects.label[order])
    regroup = np.argsort(keys, kind="stable")  # stable: ties in score keep the input order, like COCOeval
    order, keys = order[regroup], keys[regroup]
    if max_per_pair is not None:
        keep = _group_ranks(keys) < max_per_pair
        order, keys = order[keep], keys[keep]
    return order, keys


# --------------------------------------------------------------------------- the evaluation
@dataclass
class CocoEvaluation:
    """Everything COCOeval.accumulate() computes, as tensors (-1 where undefined, like pycocotools).

    precision: Tensor[T, R, K, A, M] float64, interpolated precision at each IoU threshold (T), recall
        threshold (R = 101), class (K), area range (A = all, small, medium, large) and max detections (M).
        ``precision[0, :, k, 0, -1]`` is class k's precision-recall curve at IoU 0.5 (plot it!).
    recall: Tensor[T, K, A, M] float64, the recall reached with all detections.
    classes: Tensor[K] int64, the labels present in preds or targets, sorted.
    """

    precision: Tensor
    recall: Tensor
    classes: Tensor
    iou_thresholds: Tensor  # (T,) float64
    recall_thresholds: Tensor  # (R,) float64
    max_detections: tuple[int, ...]  # (M,) e.g. (1, 10, 100)
    area_ranges: tuple[str, ...] = tuple(AREA_RANGES)


def evaluate_detections(
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    iou_type: IouType = "bbox",
    iou_thresholds: Sequence[float] | Tensor | None = None,
    max_detections: int = 100,
    area_from: AreaFrom = "iou_type",
) -> CocoEvaluation:
    """Run the COCO protocol (see the module docstring); :func:`mean_average_precision` summarises it.

    Arguments as in :func:`mean_average_precision`. Computation runs on the CPU in float64.
    """
    _check_inputs(preds, targets, iou_type, max_detections)
    if area_from not in AREA_FROM:
        raise ValueError(f"area_from must be one of {AREA_FROM}, got {area_from!r}")
    thr = _DEFAULT_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, dtype=np.float64)
    if thr.ndim != 1 or len(thr) == 0 or ((thr < 0) | (thr > 1)).any():
        raise ValueError(f"iou_thresholds must be a non-empty list of values in [0, 1], got {iou_thresholds}")
    max_dets = (1, 10, max_detections)

    dets, gts = _flatten(preds, iou_type, is_pred=True), _flatten(targets, iou_type, is_pred=False, area_from=area_from)
    classes = np.unique(np.concatenate([dets.label, gts.label]))  # sorted
    det_order, det_keys = _group(dets, classes, by_score=True, max_per_pair=max_detections)
    gt_order, gt_keys = _group(gts, classes, by_score=False, max_per_pair=None)
    pair_keys = np.unique(np.concatenate([det_keys, gt_keys]))  # (P,) sorted: image-major, then class
    det_slots = _padded_slots(det_order, det_keys, pair_keys)  # (P, D)
    gt_slots = _padded_slots(gt_order, gt_keys, pair_keys)  # (P, G)
    det_valid, gt_valid = det_slots >= 0, gt_slots >= 0

    iou = _pair_ious(preds, targets, iou_type, dets, gts, det_slots, gt_slots)  # (P, D, G), -1 on padding
    gt_ignore = _outside(gts.area[gt_slots]) | gts.crowd[gt_slots][:, None, :]  # (P, A, G)
    matched, det_ignored = _greedy_match(iou, thr, gt_ignore, gts.crowd[gt_slots] & gt_valid)  # (P, A, T, D)
    det_ignored |= ~matched & _outside(dets.area[det_slots])[:, :, None, :]  # unmatched, wrong size: no FP

    precision, recall = _accumulate(
        matched,
        det_ignored,
        np.where(det_valid, dets.score[det_slots], 0.0),
        det_valid,
        (gt_valid[:, None, :] & ~gt_ignore).sum(-1),  # (P, A): the GTs that must be found
        pair_keys % max(len(classes), 1),  # the class index of each pair
        len(classes),
        max_dets,
    )
    as_tensor = torch.from_numpy
    return CocoEvaluation(
        as_tensor(precision), as_tensor(recall), as_tensor(classes), as_tensor(thr.copy()),
        as_tensor(_RECALL_THRESHOLDS.copy()), max_dets,
    )  # fmt: skip


def _outside(area: np.ndarray) -> np.ndarray:
    """Area Array[P, X] -> Array[P, A, X] bool: outside each of the area ranges."""
    lows, highs = np.array(list(AREA_RANGES.values())).T  # (A,), (A,)
    return (area[:, None, :] < lows[None, :, None]) | (area[:, None, :] > highs[None, :, None])


def _pair_ious(preds, targets, iou_type, dets: _Objects, gts: _Objects, det_slots, gt_slots) -> np.ndarray:
    """IoU of every (detection, GT) slot of every pair -> Array[P, D, G] float64, -1 on padding.

    One IoU matrix per image (all classes at once), then gathered into the padded pair layout.
    """
    blocks, offsets, widths, start = [], [], [], 0
    for pred, target in zip(preds, targets, strict=True):
        crowd = target.get("iscrowd")
        crowd = torch.zeros(len(target["labels"]), dtype=torch.bool) if crowd is None else crowd.cpu().bool()
        if iou_type == "bbox":
            det, gt = pred["boxes"].detach().cpu().double(), target["boxes"].detach().cpu().double()
            block = _box_iou_crowd(det, gt, crowd)
        else:
            block = _mask_iou_crowd(_np_masks(pred["masks"]), _np_masks(target["masks"]), crowd.numpy())
        blocks.append(np.asarray(block).reshape(-1))
        offsets.append(start)
        widths.append(block.shape[1])
        start += block.shape[0] * block.shape[1]
    flat = np.concatenate([*blocks, [-1.0]])  # a final -1 for the padding slots to point at
    d, g = det_slots.clip(min=0), gt_slots.clip(min=0)
    image = dets.image[d]  # (P, D): both slots of a pair lie in the same image
    index = (np.array(offsets)[image] + dets.local[d] * np.array(widths)[image])[:, :, None] + gts.local[g][:, None, :]
    valid = (det_slots >= 0)[:, :, None] & (gt_slots >= 0)[:, None, :]
    return flat[np.where(valid, index, len(flat) - 1)]


def _greedy_match(
    iou: np.ndarray, thr: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching for all pairs, area ranges and IoU thresholds at once.

    iou: Array[P, D, G] (detections sorted by score, -1 on padding); thr: Array[T];
    gt_ignore: Array[P, A, G]; gt_crowd: Array[P, G]. Returns ``matched`` and ``ignored``, each
    Array[P, A, T, D] bool: the detection found a GT / the GT it found is an ignored one.

    Only the loop over detections is sequential: a GT taken by a better detection is gone for the next.
    Each detection takes, among the free GTs with IoU >= t, a regular GT before any ignored one, then
    the highest IoU, and on a tie the *last* GT (COCOeval's loop keeps replacing on ``>=``). All three
    rules fit in one integer preference per GT: ``rank of its IoU + G * is_regular``.
    """
    P, D, G = iou.shape
    A, T = gt_ignore.shape[1], len(thr)
    matched = np.zeros((P, A, T, D), dtype=bool)
    ignored = np.zeros((P, A, T, D), dtype=bool)
    if G == 0 or D == 0:
        return matched, ignored
    # COCOeval caps the threshold just below 1 so that a perfect match (IoU == 1) always counts.
    above = iou[:, :, None, :] >= np.minimum(thr, _MAX_IOU_THRESHOLD)[None, None, :, None]  # (P, D, T, G)
    rank = np.argsort(np.argsort(iou, axis=-1, kind="stable"), axis=-1)  # (P, D, G): ties -> later GT higher
    preference = rank[:, None, :, :] + G * ~gt_ignore[:, :, None, :]  # (P, A, D, G)
    taken = np.zeros((P, A, T, G + 1), dtype=bool)  # column G: where "no match" writes, never read
    rows = np.arange(P)[:, None, None]
    for d in range(D):
        cand = above[:, None, d] & ~taken[..., :G]  # (P, A, T, G)
        score = np.where(cand, preference[:, :, d, None, :], -1)
        best = score.argmax(-1)  # (P, A, T)
        best_score = np.take_along_axis(score, best[..., None], -1)[..., 0]
        hit = best_score >= 0
        matched[..., d] = hit
        ignored[..., d] = hit & (best_score < G)
        # a crowd region stays free: it can absorb any number of detections
        stays_free = ~hit | gt_crowd[rows, best]
        np.put_along_axis(taken, np.where(stays_free, G, best)[..., None], True, -1)
    return matched, ignored


def _accumulate(
    matched: np.ndarray,
    det_ignored: np.ndarray,
    det_score: np.ndarray,
    det_valid: np.ndarray,
    npig: np.ndarray,
    pair_class: np.ndarray,
    num_classes: int,
    max_dets: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Precision at the recall thresholds per class, area range and max detections (COCOeval.accumulate).

    matched, det_ignored: Array[P, A, T, D]; det_score, det_valid: Array[P, D]; npig: Array[P, A].
    Returns precision Array[T, R, K, A, M] and recall Array[T, K, A, M], -1 where a class has no GT.
    """
    _, A, T, _ = matched.shape
    R, M = len(_RECALL_THRESHOLDS), len(max_dets)
    precision = -np.ones((T, R, num_classes, A, M))
    recall = -np.ones((T, num_classes, A, M))
    for k in range(num_classes):
        pairs = np.flatnonzero(pair_class == k)  # in image order, like COCOeval
        n_gt = npig[pairs].sum(0)  # (A,)
        has_gt = n_gt > 0  # classes with no GT in an area range stay -1 there
        for m, max_det in enumerate(max_dets):
            valid = det_valid[pairs, :max_det]  # (n, m): each image's best max_det detections
            order = np.argsort(-det_score[pairs, :max_det][valid], kind="stable")  # all images, best first
            tm = matched[pairs, :, :, :max_det].transpose(1, 2, 0, 3)[:, :, valid][..., order]  # (A, T, nd)
            ti = det_ignored[pairs, :, :, :max_det].transpose(1, 2, 0, 3)[:, :, valid][..., order]
            tp = np.cumsum(tm & ~ti, -1, dtype=np.float64)
            fp = np.cumsum(~tm & ~ti, -1, dtype=np.float64)
            rc = tp / np.maximum(n_gt, 1)[:, None, None]
            pr = tp / (fp + tp + np.spacing(1))  # pycocotools' epsilon, kept for equal results
            pr = np.maximum.accumulate(pr[..., ::-1], -1)[..., ::-1]  # envelope: best precision at >= recall
            q, reached = _precision_at_recalls(rc, pr)  # (A, T, R), (A, T)
            precision[:, :, k, has_gt, m] = q[has_gt].transpose(1, 2, 0)
            recall[:, k, has_gt, m] = reached[has_gt].T
    return precision, recall


def _precision_at_recalls(rc: np.ndarray, pr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Read the precision envelope at each recall threshold: the first point whose recall reaches it.

    rc, pr: Array[A, T, nd]. Returns (Array[A, T, R], the final recall Array[A, T]); precision is 0 at
    recalls never reached.
    """
    A, T, nd = rc.shape
    if nd == 0:
        return np.zeros((A, T, len(_RECALL_THRESHOLDS))), np.zeros((A, T))
    idx = np.stack([np.searchsorted(row, _RECALL_THRESHOLDS, side="left") for row in rc.reshape(A * T, nd)])
    idx = idx.reshape(A, T, -1)
    q = np.where(idx < nd, np.take_along_axis(pr, idx.clip(max=nd - 1), -1), 0.0)
    return q, rc[..., -1]


# --------------------------------------------------------------------------- the summary
def _mean_valid(x: np.ndarray) -> float:
    """Mean of the entries > -1, or -1 if there is none (pycocotools' summarize)."""
    valid = x[x > -1]
    return float(valid.mean()) if valid.size else -1.0


def _summarize(ev: CocoEvaluation) -> dict[str, float | Tensor]:
    p, r = ev.precision.numpy(), ev.recall.numpy()  # (T, R, K, A, M), (T, K, A, M)
    out: dict[str, float | Tensor] = {"map": _mean_valid(p[:, :, :, 0, -1])}
    for iou in (0.5, 0.75):
        t = np.flatnonzero(np.isclose(ev.iou_thresholds.numpy(), iou))
        out[f"map_{round(iou * 100)}"] = _mean_valid(p[t, :, :, 0, -1]) if len(t) else -1.0
    for a, name in enumerate(ev.area_ranges[1:], start=1):
        out[f"map_{name}"] = _mean_valid(p[:, :, :, a, -1])
    for m, max_det in enumerate(ev.max_detections):
        out[f"mar_{max_det}"] = _mean_valid(r[:, :, 0, m])
    for a, name in enumerate(ev.area_ranges[1:], start=1):
        out[f"mar_{name}"] = _mean_valid(r[:, :, a, -1])
    per_class_ap = [_mean_valid(p[:, :, k, 0, -1]) for k in range(len(ev.classes))]
    per_class_ar = [_mean_valid(r[:, k, 0, -1]) for k in range(len(ev.classes))]
    out["map_per_class"] = torch.tensor(per_class_ap, dtype=torch.float64)
    out[f"mar_{ev.max_detections[-1]}_per_class"] = torch.tensor(per_class_ar, dtype=torch.float64)
    out["classes"] = ev.classes
    return out


def mean_average_precision(
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    iou_type: IouType = "bbox",
    iou_thresholds: Sequence[float] | Tensor | None = None,
    max_detections: int = 100,
    area_from: AreaFrom = "iou_type",
) -> dict[str, float | Tensor]:
    """COCO mAP and mAR of detections, equal to pycocotools' ``COCOeval`` (notebooks 05 and 07).

    Args:
        preds: one dict per image (torchmetrics / torchvision format): ``boxes`` (Tensor[N, 4] float
            xyxy pixels), ``scores`` (Tensor[N] float), ``labels`` (Tensor[N] int); for
            ``iou_type="segm"`` also ``masks`` (Tensor[N, H, W] bool/uint8; ``boxes`` then optional).
        targets: one dict per image: ``boxes``, ``labels`` (and ``masks`` for segm). Optional
            ``iscrowd`` (Tensor[N] bool/int: crowd regions, ignored like COCO) and ``area``
            (Tensor[N] float: used for small/medium/large only with ``area_from="target"``).
        iou_type: ``"bbox"`` (box IoU) or ``"segm"`` (mask IoU).
        iou_thresholds: default COCO's 0.50:0.05:0.95.
        max_detections: detections kept per image and class (best scores), at least 10; the recall
            keys are ``mar_1``, ``mar_10`` and ``mar_{max_detections}``.
        area_from: what small / medium / large measure: ``"iou_type"`` (default) the box area for
            ``"bbox"`` and the mask's pixels for ``"segm"``; ``"target"`` the targets' ``area`` (COCO).

    Returns:
        A dict of Python floats ``map``, ``map_50``, ``map_75``, ``map_small``, ``map_medium``,
        ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``, ``mar_small``, ``mar_medium``, ``mar_large``
        (-1.0 where pycocotools gives -1: nothing to evaluate), plus tensors ``classes`` (Tensor[C]
        int64: every label seen in preds or targets, sorted), ``map_per_class`` and
        ``mar_100_per_class`` (Tensor[C] float64, -1 for a class with no GT).
    """
    return _summarize(evaluate_detections(preds, targets, iou_type, iou_thresholds, max_detections, area_from))


# --------------------------------------------------------------------------- PASCAL VOC
def voc_ap(recall: Tensor | Sequence[float], precision: Tensor | Sequence[float], use_07_metric: bool = False) -> float:
    """PASCAL VOC average precision from one precision/recall curve (notebook 05).

    Args:
        recall, precision: Tensor[N], the curve after each detection sorted by decreasing score
            (recall non-decreasing), values in [0, 1].
        use_07_metric: True: VOC2007's 11-point AP, the mean over t in {0, 0.1, ..., 1} of the best
            precision at recall >= t (0 if never reached). False (VOC2010+): all-point AP, the area
            under the precision envelope (precision made non-increasing), summed where recall changes.
    """
    rec = torch.as_tensor(recall, dtype=torch.float64)
    prec = torch.as_tensor(precision, dtype=torch.float64)
    if rec.dim() != 1 or rec.shape != prec.shape:
        raise ValueError(
            f"recall and precision must be 1-D of the same length, got {list(rec.shape)}, {list(prec.shape)}"
        )
    if rec.numel() and (rec.min() < 0 or rec.max() > 1 or prec.min() < 0 or prec.max() > 1):
        raise ValueError("recall and precision must lie in [0, 1]")
    if use_07_metric:
        points = torch.arange(11, dtype=torch.float64) / 10  # k / 10 is exactly the decimal 0.k
        reached = rec[None, :] >= points[:, None]  # (11, N)
        best = torch.where(reached, prec[None, :], 0.0).amax(1) if rec.numel() else torch.zeros(11)
        return float(best.sum() / 11)
    mrec = torch.cat([torch.zeros(1, dtype=torch.float64), rec, torch.ones(1, dtype=torch.float64)])
    mpre = torch.cat([torch.zeros(1, dtype=torch.float64), prec, torch.zeros(1, dtype=torch.float64)])
    mpre = mpre.flip(0).cummax(0).values.flip(0)  # envelope
    step = (mrec[1:] != mrec[:-1]).nonzero().squeeze(1)
    return float(((mrec[step + 1] - mrec[step]) * mpre[step + 1]).sum())


# --------------------------------------------------------------------------- the reference
def _to_coco(preds, targets, iou_type: str, area_from: str = "iou_type"):
    """The same data as pycocotools wants it: a GT data set dict and a list of results (xywh boxes, RLE)."""
    from pycocotools import mask as mask_utils

    def rle(mask: Tensor) -> dict:
        return mask_utils.encode(np.asfortranarray((mask.detach().cpu().numpy() != 0).astype(np.uint8)))

    labels = torch.cat([e["labels"].cpu() for e in [*preds, *targets]]).unique().tolist()
    images, annotations, results = [], [], []
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        height, width = target.get("masks", torch.zeros(0, 0, 0)).shape[1:]
        images.append({"id": i + 1, "height": height, "width": width})  # annToRLE reads them
        areas = _areas(target, iou_type, use_given=area_from == "target").tolist()
        crowd = target.get("iscrowd")
        for j in range(len(target["labels"])):
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(target["labels"][j])}
            ann |= {"area": areas[j], "iscrowd": 0 if crowd is None else int(crowd[j])}
            if iou_type == "bbox":
                x1, y1, x2, y2 = target["boxes"][j].double().tolist()
                ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                ann["segmentation"] = rle(target["masks"][j])
            annotations.append(ann)
        for j in range(len(pred["labels"])):
            res = {
                "image_id": i + 1,
                "category_id": int(pred["labels"][j]),
                "score": float(pred["scores"][j]),
            }
            if iou_type == "bbox":
                x1, y1, x2, y2 = pred["boxes"][j].double().tolist()
                res["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                res["segmentation"] = rle(pred["masks"][j])
            results.append(res)
    categories = [{"id": int(c)} for c in labels]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def pycocotools_map(
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    iou_type: IouType = "bbox",
    iou_thresholds: Sequence[float] | None = None,
    max_detections: int = 100,
    area_from: AreaFrom = "iou_type",
):
    """pycocotools' ``COCOeval`` run on the same inputs: the reference :func:`mean_average_precision` matches.

    Returns the ``COCOeval`` object after ``evaluate(); accumulate(); summarize()`` (its printout
    silenced): ``.stats`` holds the 12 summary numbers, ``.eval["precision"]`` the (T, R, K, A, M) array.
    GT areas as in :func:`mean_average_precision`. pycocotools cannot take an empty result list.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _check_inputs(preds, targets, iou_type, max_detections)
    if area_from not in AREA_FROM:
        raise ValueError(f"area_from must be one of {AREA_FROM}, got {area_from!r}")
    dataset, results = _to_coco(preds, targets, iou_type, area_from)
    if not results:
        raise ValueError("pycocotools cannot evaluate an empty list of detections")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)  # loadRes / evaluate mutate their inputs
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType=iou_type)
        if iou_thresholds is not None:
            coco_eval.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        coco_eval.params.maxDets = [1, 10, max_detections]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval
