"""Detection as a task: training targets, losses, training steps, decoding and evaluation (notebooks 04, 05).

The networks live in :mod:`coursekit.models` (:class:`~coursekit.models.ssd.SSD`,
:class:`~coursekit.models.yolo.YOLO`, the R-CNN family in :mod:`~coursekit.models.rcnn`); everything a
training loop or an evaluation does *around* a detector lives here, in one place:

==========================  ==============================================================================
SSD (deck 004)              :func:`ssd_targets`, :func:`ssd_loss` (= torchvision's ``SSD.compute_loss``),
                            :func:`ssd_step`, :func:`ssd_decode` (= ``SSD.postprocess_detections``)
YOLO v1 (decks 001, 003)    :class:`YoloOutput`, :func:`yolo_split_output`, :func:`yolo_cells_to_xyxy`,
                            :func:`yolo_encode_targets` / :func:`yolo_decode_targets`, :func:`yolo_loss`,
                            :func:`yolo_step`, :func:`yolo_decode`
YOLOv2 (notebook 05)        :class:`YoloV2Output`, :func:`yolov2_split_output`, :func:`yolov2_cells_to_xyxy`,
                            :func:`yolov2_encode_targets` / :func:`yolov2_decode_targets`, :func:`yolov2_loss`,
                            :func:`yolov2_step`, :func:`yolov2_decode` (anchor priors:
                            :func:`coursekit.anchors.kmeans_anchors`)
R-CNN family (deck 000)     :func:`proposals_step` (R-CNN / Fast R-CNN on precomputed proposals); the losses
                            their ``forward`` computes stay beside them in :mod:`coursekit.models.rcnn`
any detector                :func:`predict` (batched, eval mode, outputs on the CPU), :func:`evaluate`
                            (COCO box mAP and seconds per image)
==========================  ==============================================================================

Targets and detections are the dicts of :mod:`coursekit.data.targets` (:class:`~coursekit.data.targets.Target`,
:class:`~coursekit.data.targets.Detection`): float ``xyxy`` pixel boxes, labels ``1..C`` (0 is the background).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.anchors import hard_negative_mining, match_anchors, wh_iou
from coursekit.boxes import (
    BBOX_XFORM_CLIP,
    batched_nms,
    box_convert,
    box_iou,
    check_boxes,
    decode_boxes,
    encode_boxes,
    paired_box_iou,
)
from coursekit.data.targets import Detection, Target

if TYPE_CHECKING:
    from coursekit.models.ssd import SSD
    from coursekit.models.yolo import YOLO, YOLOv2

__all__ = [
    "SSD_BOX_WEIGHTS",
    "ssd_targets",
    "ssd_loss",
    "ssd_step",
    "ssd_decode",
    "LAMBDA_COORD",
    "LAMBDA_NOOBJ",
    "YoloOutput",
    "yolo_split_output",
    "yolo_cells_to_xyxy",
    "yolo_encode_targets",
    "yolo_decode_targets",
    "yolo_loss",
    "yolo_step",
    "yolo_decode",
    "IGNORE_IOU",
    "YoloV2Output",
    "yolov2_split_output",
    "yolov2_cells_to_xyxy",
    "yolov2_encode_targets",
    "yolov2_decode_targets",
    "yolov2_loss",
    "yolov2_step",
    "yolov2_decode",
    "proposals_step",
    "images_and_targets",
    "predict",
    "evaluate",
]

SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # SSD / torchvision scale the deltas so both losses weigh alike
LAMBDA_COORD = 5.0  # YOLO: the paper's weight of the box terms
LAMBDA_NOOBJ = 0.5  # YOLO: the paper's weight of the confidence of boxes with no object
IGNORE_IOU = 0.6  # YOLOv2: a box that overlaps an object this much is not pushed to "no object"


# ============================================================================================== SSD
def ssd_targets(anchors: Tensor, targets: Sequence[Target]) -> tuple[Tensor, Tensor]:
    """Class and box targets of every anchor of every image.

    Args:
        anchors (Tensor[A, 4]): xyxy pixels.
        targets: one dict per image with ``boxes`` (Tensor[G, 4] xyxy) and ``labels`` (Tensor[G] int64, 1..C).

    Returns ``labels [N, A]`` int64 (0 = background) and ``box_targets [N, A, 4]`` (encoded deltas with
    :data:`SSD_BOX_WEIGHTS`; zeros for the background). Matching: IoU >= 0.5, plus each object's best
    anchor(s) kept with the object it overlaps most (torchvision's ``Matcher`` with
    ``allow_low_quality_matches``). ``SSDMatcher`` differs only when an object's best anchor overlaps
    another object more: it forces that anchor to the first object (assignment 02 implements that rule).
    """
    labels, box_targets = [], []
    for t in targets:
        matches = match_anchors(anchors, t["boxes"], high=0.5, low=0.5, allow_low_quality=True)  # (A,)
        positive = matches >= 0
        lab = torch.zeros_like(matches)
        lab[positive] = t["labels"][matches[positive]]
        deltas = torch.zeros_like(anchors)
        deltas[positive] = encode_boxes(t["boxes"][matches[positive]], anchors[positive], SSD_BOX_WEIGHTS)
        labels.append(lab)
        box_targets.append(deltas)
    return torch.stack(labels), torch.stack(box_targets)


def ssd_loss(
    cls_logits: Tensor, deltas: Tensor, anchors: Tensor, targets: Sequence[Target], neg_pos_ratio: int = 3
) -> dict[str, Tensor]:
    """SSD's loss. -> ``{"loss", "loss_cls", "loss_box"}`` scalars.

    Args:
        cls_logits (Tensor[N, A, C + 1]), deltas (Tensor[N, A, 4]): the network's output.
        anchors (Tensor[A, 4]): xyxy pixels.
        targets: one dict per image (``boxes``, ``labels``).

    ``loss_box``: smooth L1 (beta 1) between predicted and target deltas, summed over positive anchors;
    ``loss_cls``: cross-entropy summed over positives and the ``neg_pos_ratio x P`` negatives of largest
    loss in each image (hard negative mining). Both are divided by ``P``, the number of positives in the
    batch (at least 1). Equals torchvision's ``SSD.compute_loss`` (``bbox_regression``, ``classification``).
    """
    if cls_logits.dim() != 3 or deltas.shape != (*cls_logits.shape[:2], 4) or len(targets) != cls_logits.shape[0]:
        raise ValueError(
            f"need cls_logits [N, A, C + 1], deltas [N, A, 4] and N targets; got {list(cls_logits.shape)}, "
            f"{list(deltas.shape)} and {len(targets)} targets"
        )
    labels, box_targets = ssd_targets(anchors, targets)  # (N, A), (N, A, 4)
    positive = labels > 0
    num_pos = positive.sum().clamp(min=1)
    loss_box = F.smooth_l1_loss(deltas[positive], box_targets[positive], reduction="sum") / num_pos
    ce = F.cross_entropy(cls_logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)  # (N, A)
    keep = hard_negative_mining(ce, labels, neg_pos_ratio)  # positives + the hardest 3P negatives
    loss_cls = ce[keep].sum() / num_pos
    return {"loss": loss_cls + loss_box, "loss_cls": loss_cls, "loss_box": loss_box}


def ssd_step(model: SSD, batch: tuple, device: torch.device) -> dict[str, Tensor]:
    """A :class:`coursekit.train.Trainer` step: ``batch = (images [N, 3, H, W], list of target dicts)``."""
    images, targets = batch
    targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    cls_logits, deltas = model(images.to(device))
    return ssd_loss(cls_logits, deltas, model.anchors, targets)


def ssd_decode(
    cls_logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    image_size: int | tuple[int, int],
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    topk_candidates: int = 400,
    max_detections: int = 200,
) -> list[Detection]:
    """Detections of each image: a list of N dicts ``boxes`` (Tensor[K, 4] xyxy inside the image),
    ``scores`` (Tensor[K], decreasing), ``labels`` (Tensor[K] int64 in ``1..C``).

    Per image: softmax over ``C + 1`` classes; decode the deltas on the anchors and clip to the image;
    per class ``1..C``: keep scores ``> score_threshold``, then the ``topk_candidates`` best; per-class NMS
    at ``iou_threshold``; the ``max_detections`` best. Defaults are torchvision's SSD300 settings.
    """
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    probs = cls_logits.softmax(dim=-1)  # (N, A, C + 1)
    detections = []
    for p, d in zip(probs, deltas, strict=True):
        boxes = decode_boxes(d, anchors, SSD_BOX_WEIGHTS)
        boxes = torch.stack([boxes[:, 0].clamp(0, W), boxes[:, 1].clamp(0, H),
                             boxes[:, 2].clamp(0, W), boxes[:, 3].clamp(0, H)], dim=1)  # fmt: skip
        all_boxes, all_scores, all_labels = [], [], []
        for c in range(1, p.shape[-1]):
            score = p[:, c]
            candidates = (score > score_threshold).nonzero().flatten()
            top = score[candidates].topk(min(topk_candidates, candidates.numel()))
            all_boxes.append(boxes[candidates[top.indices]])
            all_scores.append(top.values)
            all_labels.append(torch.full_like(top.indices, c))
        b, s, lab = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = batched_nms(b, s, lab, iou_threshold)[:max_detections]
        detections.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return detections


# ============================================================================================= YOLO
class YoloOutput(NamedTuple):
    """The raw output, activated and split: every value in [0, 1]."""

    boxes: Tensor  # (N, S, S, B, 4): x, y offset in the cell, sqrt(w / W), sqrt(h / H)
    confidence: Tensor  # (N, S, S, B): P(object) * IoU
    class_probs: Tensor  # (N, S, S, C): P(class | object), one distribution per cell


def yolo_split_output(raw: Tensor, num_boxes: int) -> YoloOutput:
    """``raw [N, S, S, B * 5 + C]`` -> :class:`YoloOutput`: sigmoid on boxes and confidences, softmax on classes."""
    if raw.dim() != 4 or raw.shape[1] != raw.shape[2] or raw.shape[-1] <= 5 * num_boxes:
        raise ValueError(f"raw must be a Tensor[N, S, S, B * 5 + C] with B = {num_boxes}, got {list(raw.shape)}")
    N, S, _, _ = raw.shape
    per_box = raw[..., : 5 * num_boxes].reshape(N, S, S, num_boxes, 5).sigmoid()
    return YoloOutput(per_box[..., :4], per_box[..., 4], raw[..., 5 * num_boxes :].softmax(dim=-1))


def _cell_offsets(S: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Column and row index of every cell, each ``[S, S]`` (row-major: ``[i, j]`` is row i, column j)."""
    rows, cols = torch.meshgrid(torch.arange(S, device=device), torch.arange(S, device=device), indexing="ij")
    return cols.float(), rows.float()


def yolo_cells_to_xyxy(boxes: Tensor, image_size: int) -> Tensor:
    """Cell-relative boxes ``[..., S, S, B, 4]`` (x, y in the cell, sqrt w, sqrt h) -> xyxy pixels, same shape.

    Cell ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)`` in units of ``image_size / S`` pixels.
    """
    S = boxes.shape[-3]
    cols, rows = _cell_offsets(S, boxes.device)
    cell = image_size / S
    cx = (cols[..., None] + boxes[..., 0]) * cell  # (..., S, S, B)
    cy = (rows[..., None] + boxes[..., 1]) * cell
    w, h = boxes[..., 2] ** 2 * image_size, boxes[..., 3] ** 2 * image_size
    return box_convert(torch.stack((cx, cy, w, h), dim=-1), "cxcywh", "xyxy")


def yolo_encode_targets(
    boxes: Tensor, labels: Tensor, grid_size: int, image_size: int, num_classes: int
) -> Tensor:
    """One image's ground truth on the grid: ``Tensor[S, S, 5 + C]`` = (object, x, y, sqrt w, sqrt h, one-hot class).

    Args:
        boxes (Tensor[G, 4]): xyxy pixels inside the ``image_size`` square image.
        labels (Tensor[G] int64): classes ``1..C``.

    The cell holding a box's centre is responsible for it. A YOLO v1 cell holds one object only: when two
    centres fall in the same cell the larger box is kept and the smaller one is lost (a known weakness
    of v1 on crowds of small objects; compare ``len(yolo_decode_targets(...)[0])`` with ``G`` to count them).
    """
    _check_boxes_and_labels(boxes, labels, num_classes)
    S = grid_size
    target = torch.zeros(S, S, 5 + num_classes, device=boxes.device)
    for g, i, j, x, y in _centre_cells(boxes, S, image_size):
        if target[i, j, 0] > 0:
            continue
        w, h = ((boxes[g, 2:] - boxes[g, :2]) / image_size).tolist()  # fractions of the image
        target[i, j, :5] = torch.tensor([1.0, x, y, w**0.5, h**0.5])
        target[i, j, 4 + int(labels[g])] = 1.0  # one-hot: class c sits at 5 + (c - 1)
    return target


def _check_boxes_and_labels(boxes: Tensor, labels: Tensor, num_classes: int) -> None:
    """One image's ground truth for a grid target: xyxy ``boxes`` [G, 4], int ``labels`` [G] in ``1..C``."""
    check_boxes(boxes)
    if labels.shape != boxes.shape[:1] or labels.is_floating_point():
        raise ValueError(
            f"labels must be an int Tensor[G] with G = {boxes.shape[0]}, got {labels.dtype} {list(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"labels must be in 1..{num_classes} (0 is the background), got {labels.tolist()}")


def _centre_cells(boxes: Tensor, grid_size: int, image_size: int) -> list[tuple[int, int, int, float, float]]:
    """The cell that holds each box's centre: ``(g, row i, column j, x, y)`` with ``(x, y)`` the centre's offset
    in the cell (in cell units, [0, 1)), larger boxes first (they claim a contested cell first)."""
    S = grid_size
    cxcywh = box_convert(boxes, "xyxy", "cxcywh") / image_size  # fractions of the image
    order = (cxcywh[:, 2] * cxcywh[:, 3]).argsort(descending=True)
    cells = []
    for g in order.tolist():
        cx, cy = cxcywh[g, 0].item() * S, cxcywh[g, 1].item() * S
        j, i = min(int(cx), S - 1), min(int(cy), S - 1)  # column, row of the centre
        cells.append((g, i, j, cx - j, cy - i))
    return cells


def yolo_decode_targets(target: Tensor, image_size: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`yolo_encode_targets`: ``Tensor[S, S, 5 + C]`` -> (boxes ``[K, 4]`` xyxy pixels,
    labels ``[K]``)."""
    xyxy = yolo_cells_to_xyxy(target[..., None, 1:5], image_size)[..., 0, :]  # (S, S, 4)
    has_object = target[..., 0] > 0
    return xyxy[has_object], target[..., 5:].argmax(dim=-1)[has_object] + 1


def yolo_loss(
    raw: Tensor, targets: Tensor, image_size: int, num_boxes: int,
    lambda_coord: float = LAMBDA_COORD, lambda_noobj: float = LAMBDA_NOOBJ,
) -> dict[str, Tensor]:
    """The YOLO v1 loss (sum of squared errors, averaged over the batch). -> dict of scalars.

    Args:
        raw (Tensor[N, S, S, B * 5 + C]): the network's output.
        targets (Tensor[N, S, S, 5 + C]): :func:`yolo_encode_targets` of each image, stacked.

    With ``1_ij`` = "predictor j of cell i is responsible" (the one of highest IoU with the cell's object):
    ``lambda_coord * sum 1_ij [(x - x^)^2 + (y - y^)^2]`` (``loss_xy``), the same on ``sqrt w, sqrt h``
    (``loss_wh``), ``sum 1_ij (C - IoU)^2`` (``loss_obj``, confidence -> IoU), ``lambda_noobj *
    sum (1 - 1_ij) C^2`` (``loss_noobj``) and ``sum_cells-with-object sum_c (p(c) - p^(c))^2`` (``loss_cls``).
    ``"loss"`` is their sum.
    """
    out = yolo_split_output(raw, num_boxes)
    expected = [*raw.shape[:3], raw.shape[-1] - 5 * num_boxes + 5]  # [N, S, S, 5 + C]
    if list(targets.shape) != expected:
        raise ValueError(
            f"targets must be a Tensor{expected} (yolo_encode_targets, stacked), got {list(targets.shape)}"
        )
    has_object = targets[..., 0] > 0  # (N, S, S)
    pred_xyxy = yolo_cells_to_xyxy(out.boxes, image_size)  # (N, S, S, B, 4)
    target_xyxy = yolo_cells_to_xyxy(targets[..., None, 1:5], image_size)  # (N, S, S, 1, 4)
    with torch.no_grad():  # which predictor is responsible, and the IoU its confidence should say
        iou = paired_box_iou(pred_xyxy, target_xyxy)  # (N, S, S, B)
        responsible = F.one_hot(iou.argmax(dim=-1), num_boxes).bool() & has_object[..., None]
    r = responsible.float()
    box_t = targets[..., None, 1:5]  # (N, S, S, 1, 4)
    N = raw.shape[0]
    losses = {
        "loss_xy": lambda_coord * (r[..., None] * (out.boxes[..., :2] - box_t[..., :2]) ** 2).sum() / N,
        "loss_wh": lambda_coord * (r[..., None] * (out.boxes[..., 2:] - box_t[..., 2:]) ** 2).sum() / N,
        "loss_obj": (r * (out.confidence - iou) ** 2).sum() / N,
        "loss_noobj": lambda_noobj * ((1 - r) * out.confidence**2).sum() / N,
        "loss_cls": (has_object[..., None] * (out.class_probs - targets[..., 5:]) ** 2).sum() / N,
    }
    return {"loss": sum(losses.values()), **losses}


def yolo_decode(
    raw: Tensor, num_boxes: int, image_size: int,
    score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100,
) -> list[Detection]:
    """Detections of each image from ``raw [N, S, S, B * 5 + C]``: a list of N dicts (torchvision format).

    Each of the ``S * S * B`` boxes gets the class-specific score ``confidence x P(class | object)`` of its
    cell's most likely class; boxes above ``score_threshold`` are clipped to the image and go through
    per-class NMS at ``iou_threshold``. Each dict: ``boxes`` (Tensor[K, 4] xyxy pixels), ``scores``
    (Tensor[K], decreasing), ``labels`` (Tensor[K] int64 in ``1..C``), K <= ``max_detections``.
    """
    out = yolo_split_output(raw, num_boxes)
    N = raw.shape[0]
    boxes = yolo_cells_to_xyxy(out.boxes, image_size).clamp(0, image_size).reshape(N, -1, 4)  # (N, S*S*B, 4)
    cls_prob, cls = out.class_probs.max(dim=-1)  # (N, S, S)
    scores = (out.confidence * cls_prob[..., None]).reshape(N, -1)  # (N, S*S*B)
    labels = (cls[..., None].expand_as(out.confidence) + 1).reshape(N, -1)
    return _threshold_and_nms(boxes, scores, labels, score_threshold, iou_threshold, max_detections)


def _threshold_and_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, score_threshold: float, iou_threshold: float,
    max_detections: int, topk_candidates: int | None = None,
) -> list[Detection]:
    """Per image of ``boxes [N, M, 4]``, ``scores [N, M]``, ``labels [N, M]``: keep scores above the
    threshold (the ``topk_candidates`` best when given), per-class NMS, the ``max_detections`` best."""
    detections = []
    for b, s, lab in zip(boxes, scores, labels, strict=True):
        keep = (s > score_threshold).nonzero().flatten()
        if topk_candidates is not None:
            keep = keep[s[keep].topk(min(topk_candidates, keep.numel())).indices]
        b, s, lab = b[keep], s[keep], lab[keep]
        kept = batched_nms(b, s, lab, iou_threshold)[:max_detections]
        detections.append({"boxes": b[kept], "scores": s[kept], "labels": lab[kept]})
    return detections


def yolo_step(model: YOLO, batch: tuple, device: torch.device) -> dict[str, Tensor]:
    """A :class:`coursekit.train.Trainer` step: ``batch = (images [N, 3, H, W], list of target dicts)``."""
    images, targets = batch
    images = images.to(device)
    grid = torch.stack([
        yolo_encode_targets(t["boxes"], t["labels"], model.grid_size, model.image_size, model.num_classes)
        for t in targets
    ]).to(device)  # (N, S, S, 5 + C)
    return yolo_loss(model(images), grid, model.image_size, model.num_boxes)


# =========================================================================================== YOLOv2
class YoloV2Output(NamedTuple):
    """YOLOv2's raw output, activated and split (:func:`yolov2_split_output`)."""

    xy: Tensor  # (N, S, S, K, 2): sigmoid(t_x, t_y), the centre's offset in its cell, in [0, 1]
    twh: Tensor  # (N, S, S, K, 2): t_w, t_h = log(size / anchor size), unbounded
    confidence: Tensor  # (N, S, S, K): sigmoid(t_o), trained towards P(object) * IoU
    class_probs: Tensor  # (N, S, S, K, C): P(class | object), one distribution per box


def yolov2_split_output(raw: Tensor) -> YoloV2Output:
    """``raw [N, S, S, K, 5 + C]`` -> :class:`YoloV2Output`: sigmoid on offsets and confidence, softmax on classes."""
    if raw.dim() != 5 or raw.shape[1] != raw.shape[2] or raw.shape[-1] <= 5:
        raise ValueError(f"raw must be a Tensor[N, S, S, K, 5 + C] (K anchors, C >= 1 classes), got {list(raw.shape)}")
    return YoloV2Output(raw[..., :2].sigmoid(), raw[..., 2:4], raw[..., 4].sigmoid(), raw[..., 5:].softmax(dim=-1))


def _check_anchors(anchors: Tensor, raw_or_target: Tensor) -> None:
    if anchors.dim() != 2 or anchors.shape[1] != 2 or anchors.shape[0] != raw_or_target.shape[-2]:
        raise ValueError(
            f"anchors must be a Tensor[K, 2] (width, height) with K = {raw_or_target.shape[-2]} (the grid's "
            f"anchor dimension), got {list(anchors.shape)}"
        )


def yolov2_cells_to_xyxy(xy: Tensor, twh: Tensor, anchors: Tensor, image_size: int) -> Tensor:
    """Boxes on the grid -> xyxy pixels ``[..., S, S, K, 4]``.

    Args:
        xy (Tensor[..., S, S, K, 2]): the centre's offset inside its cell, in [0, 1].
        twh (Tensor[..., S, S, K, 2]): ``log(w / p_w), log(h / p_h)``.
        anchors (Tensor[K, 2]): the priors ``(p_w, p_h)`` in pixels.

    Cell ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)`` in units of ``stride = image_size / S`` pixels:
    ``cx = (j + x) * stride``, ``w = p_w * exp(t_w)`` (``t_w`` clamped at :data:`coursekit.boxes.BBOX_XFORM_CLIP`
    so that a wild prediction cannot make an infinite box).
    """
    S = xy.shape[-3]
    cols, rows = _cell_offsets(S, xy.device)
    stride = image_size / S
    cx = (cols[..., None] + xy[..., 0]) * stride  # (..., S, S, K)
    cy = (rows[..., None] + xy[..., 1]) * stride
    wh = anchors.to(twh) * twh.clamp(max=BBOX_XFORM_CLIP).exp()  # (..., S, S, K, 2); clamped as torchvision does
    return box_convert(torch.stack((cx, cy, wh[..., 0], wh[..., 1]), dim=-1), "cxcywh", "xyxy")


def yolov2_encode_targets(
    boxes: Tensor, labels: Tensor, anchors: Tensor, grid_size: int, image_size: int, num_classes: int
) -> Tensor:
    """One image's ground truth on the grid: ``Tensor[S, S, K, 5 + C]`` = (object, x, y, t_w, t_h, one-hot class).

    Args:
        boxes (Tensor[G, 4]): xyxy pixels inside the ``image_size`` square image.
        labels (Tensor[G] int64): classes ``1..C``.
        anchors (Tensor[K, 2]): the priors ``(width, height)`` in pixels.

    The cell holding a box's centre is responsible for it, and of its K predictors the one whose anchor
    has the closest shape (largest :func:`coursekit.anchors.wh_iou`). Two objects are lost to each other
    only when they share the cell *and* the anchor (the larger is kept), far rarer than v1's shared cell.
    """
    _check_boxes_and_labels(boxes, labels, num_classes)
    if anchors.dim() != 2 or anchors.shape[1] != 2:
        raise ValueError(f"anchors must be a Tensor[K, 2] of (width, height), got {list(anchors.shape)}")
    anchors = anchors.to(boxes)
    S, K = grid_size, anchors.shape[0]
    target = torch.zeros(S, S, K, 5 + num_classes, device=boxes.device)
    wh = boxes[:, 2:] - boxes[:, :2]  # (G, 2)
    best = wh_iou(wh, anchors).argmax(dim=1) if len(wh) else wh.new_zeros(0, dtype=torch.long)  # (G,)
    for g, i, j, x, y in _centre_cells(boxes, S, image_size):
        a = int(best[g])
        if target[i, j, a, 0] > 0:
            continue
        tw, th = (wh[g] / anchors[a]).log().tolist()
        target[i, j, a, :5] = torch.tensor([1.0, x, y, tw, th])
        target[i, j, a, 4 + int(labels[g])] = 1.0  # one-hot: class c sits at 5 + (c - 1)
    return target


def yolov2_decode_targets(target: Tensor, anchors: Tensor, image_size: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`yolov2_encode_targets`: ``Tensor[S, S, K, 5 + C]`` -> (boxes ``[G', 4]`` xyxy
    pixels, labels ``[G']``); ``G - G'`` objects were lost to a shared cell and anchor."""
    _check_anchors(anchors, target[..., 0, None])
    xyxy = yolov2_cells_to_xyxy(target[..., 1:3], target[..., 3:5], anchors, image_size)  # (S, S, K, 4)
    has_object = target[..., 0] > 0
    return xyxy[has_object], target[..., 5:].argmax(dim=-1)[has_object] + 1


def yolov2_loss(
    raw: Tensor, targets: Tensor, anchors: Tensor, image_size: int,
    lambda_coord: float = LAMBDA_COORD, lambda_noobj: float = LAMBDA_NOOBJ, ignore_iou: float = IGNORE_IOU,
) -> dict[str, Tensor]:
    """The YOLOv2 loss: v1's five terms, per anchor (summed, averaged over the batch). -> dict of scalars.

    Args:
        raw (Tensor[N, S, S, K, 5 + C]): the network's output.
        targets (Tensor[N, S, S, K, 5 + C]): :func:`yolov2_encode_targets` of each image, stacked.
        anchors (Tensor[K, 2]): the priors ``(width, height)`` in pixels.

    With ``1_ik`` = "anchor k of cell i holds an object": ``lambda_coord * sum 1_ik [(x - x^)^2 + (y - y^)^2]``
    (``loss_xy``), the same on ``t_w, t_h`` (``loss_wh``), ``sum 1_ik (C - IoU)^2`` (``loss_obj``),
    ``lambda_noobj * sum (1 - 1_ik) C^2`` over the boxes that overlap no object by more than ``ignore_iou``
    (``loss_noobj``; a box sitting well on an object that another anchor is responsible for is left
    alone) and ``sum 1_ik -log p_ik(c)`` (``loss_cls``: per box, not per cell, and a cross-entropy: darknet's
    region layer back-propagates ``p - p^`` into the class logits, which is the cross-entropy's gradient).
    ``"loss"`` is their sum.
    """
    out = yolov2_split_output(raw)
    _check_anchors(anchors, raw)
    if targets.shape != raw.shape:
        raise ValueError(
            f"targets must be a Tensor{list(raw.shape)} (yolov2_encode_targets, stacked), got {list(targets.shape)}"
        )
    N = raw.shape[0]
    has_object = targets[..., 0] > 0  # (N, S, S, K)
    with torch.no_grad():  # the IoU each confidence should say, and the boxes too good to call "no object"
        pred_xyxy = yolov2_cells_to_xyxy(out.xy, out.twh, anchors, image_size)  # (N, S, S, K, 4)
        target_xyxy = yolov2_cells_to_xyxy(targets[..., 1:3], targets[..., 3:5], anchors, image_size)
        iou = paired_box_iou(pred_xyxy, target_xyxy)  # (N, S, S, K), meaningful where has_object
        best = torch.stack([
            box_iou(p.reshape(-1, 4), t[o]).max(dim=1).values.view(o.shape) if o.any() else torch.zeros_like(i)
            for p, t, o, i in zip(pred_xyxy, target_xyxy, has_object, iou, strict=True)
        ])  # (N, S, S, K): each box's best IoU with any object of its image
    r = has_object.float()
    noobj = (~has_object & (best <= ignore_iou)).float()
    losses = {
        "loss_xy": lambda_coord * (r[..., None] * (out.xy - targets[..., 1:3]) ** 2).sum() / N,
        "loss_wh": lambda_coord * (r[..., None] * (out.twh - targets[..., 3:5]) ** 2).sum() / N,
        "loss_obj": (r * (out.confidence - iou) ** 2).sum() / N,
        "loss_noobj": lambda_noobj * (noobj * out.confidence**2).sum() / N,
        "loss_cls": F.cross_entropy(raw[has_object][:, 5:], targets[has_object][:, 5:].argmax(dim=-1),
                                    reduction="sum") / N,
    }
    return {"loss": sum(losses.values()), **losses}


def yolov2_decode(
    raw: Tensor, anchors: Tensor, image_size: int,
    score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100,
    topk_candidates: int = 200,
) -> list[Detection]:
    """Detections of each image from ``raw [N, S, S, K, 5 + C]``: a list of N dicts (torchvision format).

    Every box gets one score per class, ``confidence x P(class | object)`` of *its own* distribution (v2
    keeps the box's runner-up class too: a 3 that might be an 8 is both, each scored); the
    ``topk_candidates`` best scores above ``score_threshold`` are clipped to the image and go through
    per-class NMS at ``iou_threshold``. Each dict: ``boxes`` (Tensor[K, 4] xyxy pixels), ``scores``
    (Tensor[K], decreasing), ``labels`` (Tensor[K] int64 in ``1..C``), K <= ``max_detections``.
    """
    out = yolov2_split_output(raw)
    _check_anchors(anchors, raw)
    N, C = raw.shape[0], raw.shape[-1] - 5
    boxes = yolov2_cells_to_xyxy(out.xy, out.twh, anchors, image_size).clamp(0, image_size).reshape(N, -1, 1, 4)
    scores = (out.confidence[..., None] * out.class_probs).reshape(N, -1, C)  # (N, S*S*K, C)
    labels = torch.arange(1, C + 1, device=raw.device).expand_as(scores)
    return _threshold_and_nms(boxes.expand(-1, -1, C, -1).reshape(N, -1, 4), scores.reshape(N, -1),
                              labels.reshape(N, -1), score_threshold, iou_threshold, max_detections, topk_candidates)


def yolov2_step(model: YOLOv2, batch: tuple, device: torch.device) -> dict[str, Tensor]:
    """A :class:`coursekit.train.Trainer` step: ``batch = (images [N, 3, H, W], list of target dicts)``."""
    images, targets = batch
    anchors = model.anchors.cpu()
    grid = torch.stack([
        yolov2_encode_targets(t["boxes"], t["labels"], anchors, model.grid_size, model.image_size, model.num_classes)
        for t in targets
    ]).to(device)  # (N, S, S, K, 5 + C)
    return yolov2_loss(model(images.to(device)), grid, model.anchors, model.image_size)


# ====================================================================================== R-CNN family
def proposals_step(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
    """A :class:`coursekit.train.Trainer` step for detectors trained on precomputed proposals (R-CNN,
    Fast R-CNN of :mod:`coursekit.models.rcnn`): ``batch = (images, proposals, targets)``, lists with one
    entry per image."""
    from coursekit.train import to_device

    if not isinstance(batch, (list, tuple)) or len(batch) != 3:
        raise ValueError("proposals_step expects batches (images, proposals, targets)")
    images, proposals, targets = to_device(tuple(batch), device)
    losses = model(list(images), list(targets), proposals=list(proposals))
    return {"loss": sum(losses.values()), **losses}


# ====================================================================================== any detector
def images_and_targets(data: Any) -> tuple[list[Tensor], list[Any] | None]:
    """``(images, targets)`` of a dataset of ``(image, target)`` pairs; ``(images, None)`` for a list of
    ``Tensor[3, H, W]`` or a ``Tensor[B, 3, H, W]``."""
    if isinstance(data, Tensor):
        if data.dim() != 4:
            raise ValueError(f"a batch of images must be Tensor[B, 3, H, W], got {list(data.shape)}")
        return list(data), None
    items = [data[i] for i in range(len(data))]
    if items and isinstance(items[0], (tuple, list)):
        return [image for image, _ in items], [target for _, target in items]
    if not all(isinstance(x, Tensor) and x.dim() == 3 for x in items):
        raise ValueError("data must be a dataset of (image, target), a list of Tensor[3, H, W] or a Tensor[B, 3, H, W]")
    return list(items), None


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Any,
    *,
    proposals: Sequence[Tensor] | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Detection]:
    """Run a detector in eval mode on images, ``batch_size`` at a time; one detection dict per image, on the CPU.

    Args:
        model: a torchvision-style detector (``model(list of Tensor[3, H, W])`` -> list of dicts in eval
            mode: torchvision's, :mod:`coursekit.models.rcnn`'s), or one of coursekit's single-shot
            detectors, whose ``detect(Tensor[B, 3, H, W])`` is called instead (SSD, YOLO).
        images: a list of ``Tensor[3, H, W]`` in [0, 1], a ``Tensor[B, 3, H, W]``, or a dataset of
            ``(image, target)`` pairs (its targets are ignored).
        proposals: one ``Tensor[K_i, 4]`` per image, passed as ``proposals=`` (R-CNN, Fast R-CNN).
        device: where to run (default ``coursekit.device()``); the model is moved there.

    The model's train / eval mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    from coursekit.runtime import device as default_device
    from coursekit.train import to_device

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else default_device()
    images, _ = images_and_targets(images)
    if proposals is not None and len(proposals) != len(images):
        raise ValueError(f"one proposal tensor per image: got {len(proposals)} for {len(images)} images")
    was_training = model.training
    model.to(dev).eval()
    outputs: list[dict[str, Tensor]] = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="predict", disable=not progress):
            batch = to_device(images[start : start + batch_size], dev)
            if hasattr(model, "detect"):  # coursekit's single-shot detectors: raw outputs -> boxes
                out = model.detect(torch.stack(batch))
            elif proposals is not None:
                out = model(batch, proposals=to_device(list(proposals[start : start + batch_size]), dev))
            else:
                out = model(batch)
            outputs += to_device(out, "cpu")
    finally:
        model.train(was_training)
    return outputs


def evaluate(
    model: nn.Module,
    data: Any,
    targets: Sequence[Target] | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """COCO box mAP of a detector on held-out data, and how long it took.

    Args:
        data: a dataset of ``(image, target)`` pairs, or images (then pass ``targets``).

    Returns the dict of :func:`coursekit.metrics.mean_average_precision` (``map``, ``map_50``,
    ``map_small``, ...), plus ``seconds_per_image`` (inference and post-processing, batched) and
    ``predictions`` (the detections, one dict per image).
    """
    from coursekit.metrics import mean_average_precision

    images, found = images_and_targets(data)
    targets = found if targets is None else list(targets)
    if targets is None or len(targets) != len(images):
        raise ValueError("evaluate needs a dataset of (image, target) pairs, or images and one target per image")
    start = time.perf_counter()
    preds = predict(model, images, device=device, batch_size=batch_size, progress=progress)
    seconds = (time.perf_counter() - start) / max(len(images), 1)
    return {**mean_average_precision(preds, targets), "seconds_per_image": seconds, "predictions": preds}
