"""YOLO v1 in miniature: one network pass, an S x S grid, B boxes per cell (decks 001, 003, 004).

Redmon et al., "You only look once: unified, real-time object detection" (CVPR 2016); taught in
notebook ``05_yolo_ssd``. The figure the code follows::

    image [N, 3, H, W] ─► TinyDarknet (stride H / S) ─► head ─► raw [N, S, S, B * 5 + C]
    per cell:  B x (x, y, sqrt w, sqrt h, confidence)  +  C class probabilities P(class | object)

- The cell that holds an object's centre is responsible for it (:func:`encode_targets`); ``(x, y)``
  is the centre's offset inside that cell, ``(sqrt w, sqrt h)`` the size as a fraction of the image
  (the square root makes an error on a small box cost more than the same error on a big one).
- Confidence is trained towards ``P(object) * IoU(predicted box, ground truth)``: a box that sits
  badly on its object should say so.
- :func:`yolo_loss` is the paper's sum of squared errors with ``lambda_coord = 5`` and
  ``lambda_noobj = 0.5`` (most cells hold no object; without the 0.5 their "no" would drown the rest).
- :func:`decode` turns the grid into boxes: class score = confidence x P(class | object), then NMS.

:class:`TinyDarknet`, the small convolutional body, is shared with :mod:`coursekit.models.ssd`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.boxes import batched_nms, box_convert, check_boxes

__all__ = [
    "conv_block",
    "TinyDarknet",
    "YOLO",
    "YoloOutput",
    "split_output",
    "cells_to_xyxy",
    "encode_targets",
    "decode_targets",
    "yolo_loss",
    "decode",
    "yolo_step",
]

LAMBDA_COORD = 5.0  # the paper's weight of the box terms
LAMBDA_NOOBJ = 0.5  # the paper's weight of the confidence of boxes with no object


# ------------------------------------------------------------------------------------------- network
def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (padding 1) + BatchNorm + LeakyReLU(0.1), YOLO's building block."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)
    )


class TinyDarknet(nn.Module):
    """A small backbone: stages that each halve the resolution. ``forward`` -> the list of stage outputs.

    Stage ``i`` (0-based) has stride ``2 ** (i + 1)`` and ``widths[i]`` channels: a strided conv, then
    (after the first stage) a second conv at the new resolution. With the default five widths the
    strides are 2, 4, 8, 16, 32; ``x [N, 3, H, W]`` -> ``[N, widths[i], H / 2**(i+1), W / 2**(i+1)]``.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 128), in_channels: int = 3):
        super().__init__()
        if len(widths) == 0 or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive channel counts, got {widths}")
        stages, c_in = [], in_channels
        for i, c in enumerate(widths):
            layers = [conv_block(c_in, c, stride=2)] + ([conv_block(c, c)] if i > 0 else [])
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.widths = tuple(widths)
        self.strides = tuple(2 ** (i + 1) for i in range(len(widths)))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _check_images(x: Tensor, image_size: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be a Tensor[N, 3, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"this model was built for {image_size}x{image_size} images, got {tuple(x.shape[-2:])}; "
            f"resize the images or build the model with image_size={x.shape[-1]}"
        )


class YOLO(nn.Module):
    """YOLO v1 on a small backbone. ``forward(x [N, 3, H, W])`` -> raw ``[N, S, S, B * 5 + C]`` logits.

    Args:
        num_classes: ``C``, object classes (labels ``1..C`` in targets, 0 is the background).
        image_size: square input side ``H = W``; ``image_size / grid_size`` must be a power of 2
            (the backbone's stride), e.g. 96 px and S = 6 (stride 16).
        grid_size: ``S``.
        num_boxes: ``B``, boxes per cell (2 in the paper).
        widths: channels of the backbone stages (only the stages down to stride ``image_size / S``
            are built); the head adds two convs of the last width (context beyond one cell, the job of
            the paper's fully connected layers).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        grid_size: int = 6,
        num_boxes: int = 2,
        widths: tuple[int, ...] = (16, 32, 64, 128, 128),
    ):
        super().__init__()
        if num_classes < 1 or num_boxes < 1 or grid_size < 1:
            raise ValueError(
                f"need num_classes, num_boxes, grid_size >= 1, got {num_classes}, {num_boxes}, {grid_size}"
            )
        stride = image_size // grid_size
        n_stages = stride.bit_length() - 1
        if stride * grid_size != image_size or 2**n_stages != stride or not 1 <= n_stages <= len(widths):
            raise ValueError(
                f"image_size / grid_size = {image_size} / {grid_size} must be a power of 2 between 2 and "
                f"{2 ** len(widths)} (the backbone's strides), e.g. image_size=96, grid_size=6"
            )
        self.num_classes, self.image_size = num_classes, image_size
        self.grid_size, self.num_boxes = grid_size, num_boxes
        self.backbone = TinyDarknet(widths[:n_stages])
        c = widths[n_stages - 1]
        self.head = nn.Sequential(conv_block(c, c), conv_block(c, c), nn.Conv2d(c, num_boxes * 5 + num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, self.image_size)
        features = self.backbone(x)[-1]  # (N, c, S, S)
        return self.head(features).permute(0, 2, 3, 1)  # (N, S, S, B * 5 + C)

    @torch.no_grad()
    def detect(
        self, images: Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100
    ) -> list[dict[str, Tensor]]:
        """Boxes of a batch ``[N, 3, H, W]``: :func:`decode` of ``forward``, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            raw = self(images)
        finally:
            self.train(was_training)
        return decode(raw, self.num_boxes, self.image_size, score_threshold, iou_threshold, max_detections)


# ------------------------------------------------------------------------------------ the grid <-> boxes
class YoloOutput(NamedTuple):
    """The raw output, activated and split: every value in [0, 1]."""

    boxes: Tensor  # (N, S, S, B, 4): x, y offset in the cell, sqrt(w / W), sqrt(h / H)
    confidence: Tensor  # (N, S, S, B): P(object) * IoU
    class_probs: Tensor  # (N, S, S, C): P(class | object), one distribution per cell


def split_output(raw: Tensor, num_boxes: int) -> YoloOutput:
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


def cells_to_xyxy(boxes: Tensor, image_size: int) -> Tensor:
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


def encode_targets(
    boxes: Tensor, labels: Tensor, grid_size: int, image_size: int, num_classes: int
) -> Tensor:
    """One image's ground truth on the grid: ``Tensor[S, S, 5 + C]`` = (object, x, y, sqrt w, sqrt h, one-hot class).

    Args:
        boxes (Tensor[G, 4]): xyxy pixels inside the ``image_size`` square image.
        labels (Tensor[G] int64): classes ``1..C``.

    The cell holding a box's centre is responsible for it. A YOLO v1 cell holds one object only: when two
    centres fall in the same cell the larger box is kept and the smaller one is lost (a known weakness
    of v1 on crowds of small objects; compare ``len(decode_targets(...)[0])`` with ``G`` to count them).
    """
    check_boxes(boxes)
    if labels.shape != boxes.shape[:1] or labels.is_floating_point():
        raise ValueError(
            f"labels must be an int Tensor[G] with G = {boxes.shape[0]}, got {labels.dtype} {list(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"labels must be in 1..{num_classes} (0 is the background), got {labels.tolist()}")
    S = grid_size
    target = torch.zeros(S, S, 5 + num_classes, device=boxes.device)
    cxcywh = box_convert(boxes, "xyxy", "cxcywh") / image_size  # fractions of the image
    order = (cxcywh[:, 2] * cxcywh[:, 3]).argsort(descending=True)  # larger boxes claim their cell first
    for g in order.tolist():
        cx, cy, w, h = cxcywh[g].tolist()
        j, i = min(int(cx * S), S - 1), min(int(cy * S), S - 1)  # column, row of the centre
        if target[i, j, 0] > 0:
            continue
        target[i, j, :5] = torch.tensor([1.0, cx * S - j, cy * S - i, w**0.5, h**0.5])
        target[i, j, 4 + int(labels[g])] = 1.0  # one-hot: class c sits at 5 + (c - 1)
    return target


def decode_targets(target: Tensor, image_size: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`encode_targets`: ``Tensor[S, S, 5 + C]`` -> (boxes ``[K, 4]`` xyxy pixels, labels ``[K]``)."""
    xyxy = cells_to_xyxy(target[..., None, 1:5], image_size)[..., 0, :]  # (S, S, 4)
    has_object = target[..., 0] > 0
    return xyxy[has_object], target[..., 5:].argmax(dim=-1)[has_object] + 1


# ---------------------------------------------------------------------------------------------- loss
def _pair_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcast pairs of xyxy boxes ``[..., 4]`` -> ``[...]`` (0 for two empty boxes)."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def yolo_loss(
    raw: Tensor, targets: Tensor, image_size: int, num_boxes: int,
    lambda_coord: float = LAMBDA_COORD, lambda_noobj: float = LAMBDA_NOOBJ,
) -> dict[str, Tensor]:
    """The YOLO v1 loss (sum of squared errors, averaged over the batch). -> dict of scalars.

    Args:
        raw (Tensor[N, S, S, B * 5 + C]): the network's output.
        targets (Tensor[N, S, S, 5 + C]): :func:`encode_targets` of each image, stacked.

    With ``1_ij`` = "predictor j of cell i is responsible" (the one of highest IoU with the cell's object):
    ``lambda_coord * sum 1_ij [(x - x^)^2 + (y - y^)^2]`` (``loss_xy``), the same on ``sqrt w, sqrt h``
    (``loss_wh``), ``sum 1_ij (C - IoU)^2`` (``loss_obj``, confidence -> IoU), ``lambda_noobj *
    sum (1 - 1_ij) C^2`` (``loss_noobj``) and ``sum_cells-with-object sum_c (p(c) - p^(c))^2`` (``loss_cls``).
    ``"loss"`` is their sum.
    """
    out = split_output(raw, num_boxes)
    expected = [*raw.shape[:3], raw.shape[-1] - 5 * num_boxes + 5]  # [N, S, S, 5 + C]
    if list(targets.shape) != expected:
        raise ValueError(f"targets must be a Tensor{expected} (encode_targets, stacked), got {list(targets.shape)}")
    has_object = targets[..., 0] > 0  # (N, S, S)
    pred_xyxy = cells_to_xyxy(out.boxes, image_size)  # (N, S, S, B, 4)
    target_xyxy = cells_to_xyxy(targets[..., None, 1:5], image_size)  # (N, S, S, 1, 4)
    with torch.no_grad():  # which predictor is responsible, and the IoU its confidence should say
        iou = _pair_iou(pred_xyxy, target_xyxy)  # (N, S, S, B)
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


# -------------------------------------------------------------------------------------------- decoding
def decode(
    raw: Tensor, num_boxes: int, image_size: int,
    score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100,
) -> list[dict[str, Tensor]]:
    """Detections of each image from ``raw [N, S, S, B * 5 + C]``: a list of N dicts (torchvision format).

    Each of the ``S * S * B`` boxes gets the class-specific score ``confidence x P(class | object)`` of its
    cell's most likely class; boxes above ``score_threshold`` are clipped to the image and go through
    per-class NMS at ``iou_threshold``. Each dict: ``boxes`` (Tensor[K, 4] xyxy pixels), ``scores``
    (Tensor[K], decreasing), ``labels`` (Tensor[K] int64 in ``1..C``), K <= ``max_detections``.
    """
    out = split_output(raw, num_boxes)
    N = raw.shape[0]
    boxes = cells_to_xyxy(out.boxes, image_size).clamp(0, image_size).reshape(N, -1, 4)  # (N, S*S*B, 4)
    cls_prob, cls = out.class_probs.max(dim=-1)  # (N, S, S)
    scores = (out.confidence * cls_prob[..., None]).reshape(N, -1)  # (N, S*S*B)
    labels = (cls[..., None].expand_as(out.confidence) + 1).reshape(N, -1)
    detections = []
    for b, s, lab in zip(boxes, scores, labels, strict=True):
        keep = s > score_threshold
        b, s, lab = b[keep], s[keep], lab[keep]
        kept = batched_nms(b, s, lab, iou_threshold)[:max_detections]
        detections.append({"boxes": b[kept], "scores": s[kept], "labels": lab[kept]})
    return detections


def yolo_step(model: YOLO, batch: tuple, device: torch.device) -> dict[str, Tensor]:
    """A :class:`coursekit.train.Trainer` step: ``batch = (images [N, 3, H, W], list of target dicts)``."""
    images, targets = batch
    images = images.to(device)
    grid = torch.stack([
        encode_targets(t["boxes"], t["labels"], model.grid_size, model.image_size, model.num_classes)
        for t in targets
    ]).to(device)  # (N, S, S, 5 + C)
    return yolo_loss(model(images), grid, model.image_size, model.num_boxes)
