"""Mask R-CNN's RoI pooling, written out: FPN's multi-scale pooler and the swap that measures quantisation.

Taught in notebook 07 (instance segmentation; decks 000, 003, 004). Mask R-CNN is Faster R-CNN with a
third branch: for every detected box, a small fully convolutional head predicts a 28 x 28 mask of the
object *inside that box*, one mask per class; the mask is then pasted back into the image. Its one
new operation is RoI Align (:func:`coursekit.ops.roi_align`): RoI pooling without rounding, because a
mask, unlike a class score, must line up with the pixels.

- The model itself, torchvision's ``MaskRCNN`` sized for 96-128 px scenes and built offline, is
  :func:`coursekit.models.torchvision_detection.torchvision_mask_rcnn` (beside its Faster R-CNN twin).
- :class:`MultiScaleRoIPooler` and :func:`swap_roi_poolers`: FPN's multi-scale RoI pooling written out
  (equal to ``torchvision.ops.MultiScaleRoIAlign`` with ``op="align"``), with RoI *pooling* as the other
  choice, to measure what quantisation costs a trained model.

This file holds the networks; predicting, scoring (box and mask AP) and the controlled RoI-pool
experiment are task code, in :mod:`coursekit.instance_segmentation`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "RoIOp",
    "ROI_OPS",
    "MultiScaleRoIPooler",
    "swap_roi_poolers",
]

RoIOp = Literal["align", "pool"]
ROI_OPS: tuple[str, ...] = get_args(RoIOp)


# ====================================================================================== RoI poolers
def _feature_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
    """Feature cells per image pixel, rounded to a power of 2 (1/4 for P2, ...): torchvision's rule."""
    return 2.0 ** round(math.log2(feature.shape[-2] / image_size[0]))


class MultiScaleRoIPooler(nn.Module):
    """FPN's multi-scale RoI pooling: each RoI is pooled from the pyramid level that suits its size.

    A RoI of ``w x h`` image pixels goes to level ``k = floor(4 + log2(sqrt(w h) / 224))`` (FPN paper,
    eq. 1), clamped to the levels given: small RoIs read the fine P2 map (stride 4), large ones the
    coarse P5 (stride 32). Then one RoI op per level:

    - ``op="align"``: ``torchvision.ops.roi_align`` (``aligned=False``, ``sampling_ratio``), Mask R-CNN;
      equal to ``torchvision.ops.MultiScaleRoIAlign`` (``tests/test_mask_rcnn.py``).
    - ``op="pool"``: ``torchvision.ops.roi_pool``, Fast R-CNN's quantised max-pooling.

    Args:
        featmap_names: the feature maps to pool from, finest first (``["0", "1", "2", "3"]``).
        output_size: ``7`` for the box head, ``14`` for the mask head.

    Forward: ``x`` (dict name -> ``Tensor[B, C, H_l, W_l]``), ``boxes`` (list of ``Tensor[K_i, 4]`` xyxy
    image pixels), ``image_shapes`` (list of ``(H, W)`` after the model's resize) -> ``Tensor[K, C, o, o]``.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int,
        sampling_ratio: int = 2,
        op: RoIOp = "align",
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if op not in ROI_OPS:
            raise ValueError(f"op must be one of {ROI_OPS}, got {op!r}")
        if not featmap_names:
            raise ValueError("featmap_names must name at least one feature map, e.g. ['0', '1', '2', '3']")
        self.featmap_names = list(featmap_names)
        self.output_size = (int(output_size), int(output_size))
        self.sampling_ratio = sampling_ratio
        self.op = op
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _levels(self, boxes: list[Tensor], scales: list[float]) -> Tensor:
        """Index into the pyramid (0 = finest map given) of every RoI: ``Tensor[K]`` int64."""
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))  # e.g. 2 (P2), 5 (P5)
        size = torch.cat([torchvision.ops.box_area(b) for b in boxes]).sqrt()  # (K,)
        k = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale) + 1e-6)
        return (k.clamp(k_min, k_max) - k_min).long()

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.op == "align":
            return torchvision.ops.roi_align(feature, rois, self.output_size, scale, self.sampling_ratio)
        return torchvision.ops.roi_pool(feature, rois, self.output_size, scale)

    def forward(self, x: Mapping[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        from coursekit.ops import boxes_to_rois

        features = [x[name] for name in self.featmap_names]
        # the padded batch size: torchvision measures every level against the largest image
        batch_size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [_feature_scale(f, batch_size) for f in features]
        rois = boxes_to_rois(boxes)  # (K, 5): image index, x1, y1, x2, y2
        levels = self._levels(boxes, scales)  # (K,)
        C = features[0].shape[1]
        out = features[0].new_zeros(len(rois), C, *self.output_size)  # (K, C, o, o)
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            idx = torch.where(levels == level)[0]
            out[idx] = self._pool(feature, rois[idx], scale).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"featmap_names={self.featmap_names}, output_size={self.output_size}, op={self.op!r}"


def swap_roi_poolers(model: nn.Module, op: RoIOp = "pool", copy_model: bool = True) -> nn.Module:
    """The same Mask R-CNN with its box and mask RoI poolers replaced by :class:`MultiScaleRoIPooler` (``op``).

    Same feature maps, output sizes (7 and 14) and sampling ratio; only the RoI op changes, so
    evaluating both models measures what RoI pooling's rounding costs (notebook 07). The weights are
    shared with nothing: by default a deep copy is changed and returned (``copy_model=False``: in place).
    """
    if op not in ROI_OPS:
        raise ValueError(f"op must be one of {ROI_OPS}, got {op!r}")
    heads = getattr(model, "roi_heads", None)
    if heads is None or getattr(heads, "mask_roi_pool", None) is None:
        raise ValueError("model must be a torchvision MaskRCNN (roi_heads with box_roi_pool and mask_roi_pool)")
    model = copy.deepcopy(model) if copy_model else model
    for name in ("box_roi_pool", "mask_roi_pool"):
        old = getattr(model.roi_heads, name)
        new = MultiScaleRoIPooler(old.featmap_names, old.output_size[0], old.sampling_ratio, op=op)
        setattr(model.roi_heads, name, new)
    return model
