"""The RoI format that :func:`~coursekit.ops.roi_pool` and :func:`~coursekit.ops.roi_align` share.

Both ops take their regions either as ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` or as a
list with one ``Tensor[L, 4]`` of xyxy boxes per image (torchvision's two forms), in *image* pixels.
:func:`boxes_to_rois` turns either form into the rows; :func:`scaled_rois` also checks the feature map
and projects the corners onto it. Taught with RoI pooling in notebook 04.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["boxes_to_rois", "scaled_rois"]


def boxes_to_rois(boxes: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """Boxes in either form the RoI ops accept -> ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``.

    Args:
        boxes: ``Tensor[K, 5]`` (returned as is) or a list with one ``Tensor[L_i, 4]`` of xyxy boxes
            per image of the batch (the image index becomes column 0).
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"boxes given as a Tensor must have shape [K, 5] (batch_index, x1, y1, x2, y2), "
                f"got {list(boxes.shape)}; pass a list of Tensor[L, 4] to give boxes per image"
            )
        return boxes
    if not isinstance(boxes, (list, tuple)) or not all(isinstance(b, Tensor) for b in boxes):
        raise ValueError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must have shape [L, 4] (x1, y1, x2, y2), got {list(b.shape)}")
    if not boxes:
        return torch.zeros(0, 5)
    index = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(index), torch.cat(list(boxes))], dim=1)


def scaled_rois(input: Tensor, boxes: Tensor | list[Tensor], spatial_scale: float) -> tuple[Tensor, Tensor]:
    """Check a RoI op's arguments and put the boxes on the feature map.

    Args:
        input (Tensor[N, C, H, W]): the floating-point feature maps of a batch of N images.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): the RoIs in image pixels (:func:`boxes_to_rois`).
        spatial_scale (float): feature-map cells per image pixel.

    Returns ``(batch_index, corners)``: ``Tensor[K]`` int64, the image each RoI is cut from, and
    ``Tensor[K, 4]`` its ``(x1, y1, x2, y2)`` times ``spatial_scale`` in ``input``'s dtype and device,
    detached (RoI ops are not differentiable w.r.t. the boxes, as in torchvision).
    """
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = list(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"input must be a feature map Tensor[N, C, H, W], got {shape}")
    if not input.is_floating_point():
        raise ValueError(f"input must be floating point, got {input.dtype}; use input.float()")
    rois = boxes_to_rois(boxes).to(device=input.device, dtype=input.dtype).detach()
    if rois.numel() and not torch.isfinite(rois).all():
        raise ValueError("boxes contain NaN or inf")
    if rois.numel() and ((rois[:, 0] < 0) | (rois[:, 0] >= input.shape[0])).any():
        raise ValueError(
            f"a batch index in boxes[:, 0] is outside [0, {input.shape[0] - 1}] (the input's batch)"
        )
    scale = torch.tensor(spatial_scale, dtype=input.dtype, device=input.device)
    return rois[:, 0].long(), rois[:, 1:] * scale
