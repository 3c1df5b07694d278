"""The two dicts every detection and instance-segmentation API of coursekit passes around, documented once.

A :class:`Target` is what a dataset gives for one image (``Shapes``, ``DigitScenes``, the real-data
loaders) and what the losses and metrics read; a :class:`Detection` is what a detector returns for one image
(:func:`coursekit.detection.ssd_decode`, ``yolo_decode``, :func:`coursekit.detection.predict`, torchvision's
detectors in eval mode) and what :func:`coursekit.metrics.mean_average_precision` scores. Both follow
torchvision's detection format, so torchvision's models train and evaluate on the course's data unchanged.

Conventions: boxes are float ``xyxy`` in pixels (``x2`` = last column + 1); label 0 is the background,
objects are ``1..C``; masks are ``uint8`` ``[N, H, W]`` of 0 / 1, one per object, the image's size.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor

__all__ = ["Target", "Detection"]


class _TargetRequired(TypedDict):
    boxes: Tensor  # Tensor[N, 4] float32, xyxy pixels
    labels: Tensor  # Tensor[N] int64, 1..C


class Target(_TargetRequired, total=False):
    """Ground truth of one image. ``boxes`` and ``labels`` always; the rest when the dataset has them.

    ``area`` is the object's *mask* area in pixels (COCO's annotation area). The metrics measure small /
    medium / large on the box (``iou_type="bbox"``) or the mask (``"segm"``) by default and read ``area``
    only with ``mean_average_precision(..., area_from="target")``.
    """

    masks: Tensor  # Tensor[N, H, W] uint8, 0 / 1 (instance masks; occluded pixels belong to the front object)
    area: Tensor  # Tensor[N] float32: visible mask pixels
    iscrowd: Tensor  # Tensor[N] int64 / bool: crowd regions, ignored by the metric as in COCO
    semantic: Tensor  # Tensor[H, W] int64: class index per pixel (0 = background), Shapes only
    image_id: int  # position of the image in its dataset


class _DetectionRequired(TypedDict):
    boxes: Tensor  # Tensor[K, 4] float32, xyxy pixels inside the image
    scores: Tensor  # Tensor[K] float32, decreasing
    labels: Tensor  # Tensor[K] int64, 1..C


class Detection(_DetectionRequired, total=False):
    """What a detector found in one image: ``boxes``, ``scores``, ``labels``; ``masks`` for instance
    segmentation (Mask R-CNN gives soft ``Tensor[K, 1, H, W]`` probabilities;
    :func:`coursekit.instance_segmentation.to_metrics_format` thresholds them to ``uint8 [K, H, W]``)."""

    masks: Tensor  # Tensor[K, H, W] uint8 (or Tensor[K, 1, H, W] float probabilities, Mask R-CNN's raw output)
