"""Instance segmentation as a task: predictions in the metric's format, box and mask AP, and the
controlled RoI-pool vs RoI-align experiment (notebook 07; decks 000, 003, 004).

The network, torchvision's Mask R-CNN built for the course's small images, and its RoI-pooler swap
live in :mod:`coursekit.models.mask_rcnn`; this module holds what is done around it:

- :func:`to_metrics_format`, :func:`evaluate`: model outputs (soft masks ``[N, 1, H, W]``) -> the
  format of :func:`coursekit.metrics.mean_average_precision` (masks uint8 ``[N, H, W]``) -> box AP and
  mask AP. Running the model is :func:`coursekit.detection.predict`, shared with every detector.
- :func:`crop_and_paste_masks`: what quantisation costs, with no network at all: cut ground-truth masks
  out of a stride-``s`` "feature map" with RoI pool or RoI align, paste them back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.detection import images_and_targets, predict
from coursekit.models.mask_rcnn import ROI_OPS, RoIOp

__all__ = ["to_metrics_format", "evaluate", "crop_and_paste_masks"]


def to_metrics_format(outputs: Sequence[Mapping[str, Tensor]], mask_threshold: float = 0.5) -> list[dict[str, Tensor]]:
    """Mask R-CNN outputs -> the input of :func:`coursekit.metrics.mean_average_precision` (CPU tensors).

    Args:
        outputs: per image ``{"boxes": Tensor[N, 4], "labels": Tensor[N], "scores": Tensor[N],
            "masks": Tensor[N, 1, H, W]}`` with soft masks (probabilities) as torchvision returns them.
        mask_threshold: a pixel belongs to the object when its probability is ``> mask_threshold``
            (torchvision's COCO evaluation uses ``> 0.5``).

    Returns per image ``{"boxes": float32 [N, 4], "labels": int64 [N], "scores": float32 [N],
    "masks": uint8 [N, H, W]}``.
    """
    if not 0.0 < mask_threshold < 1.0:
        raise ValueError(f"mask_threshold must be a probability in (0, 1), got {mask_threshold}")
    converted = []
    for i, out in enumerate(outputs):
        missing = {"boxes", "labels", "scores", "masks"} - set(out)
        if missing:
            raise ValueError(f"outputs[{i}] lacks {sorted(missing)}: pass Mask R-CNN's eval-mode outputs")
        masks = out["masks"].detach().cpu()
        if masks.dim() == 4:
            if masks.shape[1] != 1:
                raise ValueError(f"outputs[{i}]['masks'] must be [N, 1, H, W] or [N, H, W], got {list(masks.shape)}")
            masks = masks[:, 0]
        if masks.dim() != 3:
            raise ValueError(f"outputs[{i}]['masks'] must be [N, 1, H, W] or [N, H, W], got {list(masks.shape)}")
        converted.append({
            "boxes": out["boxes"].detach().cpu().float(),
            "labels": out["labels"].detach().cpu().long(),
            "scores": out["scores"].detach().cpu().float(),
            "masks": (masks.float() > mask_threshold).to(torch.uint8),
        })
    return converted


def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    mask_threshold: float = 0.5,
    progress: bool = False,
) -> dict[str, float]:
    """Box AP and mask AP of ``model`` on a dataset of ``(image, target)`` pairs (COCO protocol).

    Returns ``box_map``, ``box_map_50``, ``box_map_75``, ``mask_map``, ``mask_map_50``, ``mask_map_75``
    (:func:`coursekit.metrics.mean_average_precision` with ``iou_type="bbox"`` and ``"segm"``) and
    ``seconds_per_image`` (inference and post-processing, batched).
    """
    from coursekit.metrics import mean_average_precision

    images, targets = images_and_targets(dataset)
    if targets is None:
        raise ValueError("evaluate needs a dataset of (image, target) pairs, not bare images")
    start = time.perf_counter()
    preds = to_metrics_format(predict(model, images, device=device, batch_size=batch_size, progress=progress),
                              mask_threshold)
    seconds = (time.perf_counter() - start) / max(len(images), 1)
    out = {"seconds_per_image": seconds}
    for prefix, iou_type in (("box", "bbox"), ("mask", "segm")):
        metrics = mean_average_precision(preds, targets, iou_type=iou_type)
        out.update({f"{prefix}_{k}": float(metrics[k]) for k in ("map", "map_50", "map_75")})
    return out


# ======================================================================= quantisation, controlled
def crop_and_paste_masks(
    masks: Tensor,
    boxes: Tensor,
    op: RoIOp,
    stride: int = 16,
    resolution: int = 28,
    aligned: bool = True,
) -> Tensor:
    """Cut each mask out of a stride-``stride`` map with RoI ``op``, paste it back: ``uint8 Tensor[N, H, W]``.

    What the mask branch can at best recover when its features are read with ``op``, with no network:

    1. the mask is seen at the resolution of a feature map of stride ``s`` (average pooling, ``[N, 1, H/s, W/s]``);
    2. its box is cut out and resampled to ``resolution x resolution`` (28: Mask R-CNN's mask size) with
       :func:`coursekit.ops.roi_pool` (bins rounded to whole cells) or :func:`coursekit.ops.roi_align`
       (bilinear, no rounding; ``aligned=True`` puts cell values at cell centres, so only the op differs);
    3. the crop is pasted back into the box (torchvision's ``paste_masks_in_image``) and thresholded at 0.5.

    Args:
        masks: ``Tensor[N, H, W]`` bool / uint8 instance masks; H and W divisible by ``stride``.
        boxes: ``Tensor[N, 4]`` float xyxy pixels, one box per mask.
    Compare the result with ``masks`` (mask IoU) to measure the quantisation error.
    """
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from coursekit.ops import roi_align, roi_pool

    if op not in ROI_OPS:
        raise ValueError(f"op must be one of {ROI_OPS}, got {op!r}")
    if masks.dim() != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"need masks [N, H, W] and boxes [N, 4], got {list(masks.shape)} and {list(boxes.shape)}")
    N, H, W = masks.shape
    if stride < 1 or H % stride or W % stride:
        raise ValueError(f"stride must be >= 1 and divide the mask size {H}x{W}, got {stride}")
    if N == 0:
        return masks.new_zeros(0, H, W, dtype=torch.uint8)
    feature = F.avg_pool2d(masks[:, None].float(), stride)  # (N, 1, H/s, W/s): each mask its own "image"
    rois = torch.cat([torch.arange(N, dtype=torch.float32)[:, None], boxes.float()], dim=1)  # (N, 5)
    if op == "align":
        crops = roi_align(feature, rois, resolution, 1 / stride, sampling_ratio=2, aligned=aligned)
    else:
        crops = roi_pool(feature, rois, resolution, 1 / stride)  # (N, 1, r, r)
    pasted = paste_masks_in_image(crops, boxes.float(), (H, W))  # (N, 1, H, W)
    return (pasted[:, 0] > 0.5).to(torch.uint8)
