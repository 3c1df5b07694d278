"""RoI pooling (Fast R-CNN): cut a box out of a feature map and max-pool it onto a fixed grid.

Taught in notebook 04 (the R-CNN family), where it is compared with RoI Align (notebook 07).

Every RoI, whatever its size, becomes a ``C x oh x ow`` tensor that the per-RoI head can take:
the box is projected onto the feature map (``* spatial_scale``, *rounded* to whole feature cells),
split into ``oh x ow`` bins whose edges are rounded again (start floored, end ceiled), and each bin
keeps the maximum of the cells it covers. The two roundings are the "quantisation" that RoI Align
removes. Same signature and, to the bit, the same result and gradient as ``torchvision.ops.roi_pool``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["roi_pool", "boxes_to_rois"]


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


def _pair(size: int | tuple[int, int] | list[int], name: str = "output_size") -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{name} must be a positive int or a pair (oh, ow) of positive ints, got {size!r}")
    return pair


def _prepare_rois(input: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
    """Check ``input`` and return the RoIs as ``Tensor[K, 5]`` in ``input``'s dtype and device."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = list(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"input must be a feature map Tensor[N, C, H, W], got {shape}")
    if not input.is_floating_point():
        raise ValueError(f"input must be floating point, got {input.dtype}; use input.float()")
    rois = boxes_to_rois(boxes).to(device=input.device, dtype=input.dtype)
    if rois.numel() and not torch.isfinite(rois).all():
        raise ValueError("boxes contain NaN or inf")
    if rois.numel() and ((rois[:, 0] < 0) | (rois[:, 0] >= input.shape[0])).any():
        raise ValueError(
            f"a batch index in boxes[:, 0] is outside [0, {input.shape[0] - 1}] (the input's batch)"
        )
    return rois.detach()  # RoI ops are not differentiable w.r.t. the boxes (as in torchvision)


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round()``: halves go away from zero (torch.round sends them to the even neighbour)."""
    whole = torch.trunc(x)
    return whole + torch.where((x - whole).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def _bin_edges(
    start: Tensor, length: Tensor, bins: int, limit: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Integer bin edges ``[lo, hi)`` (each ``Tensor[K, bins]``) of RoIs ``start .. start + length``.

    A bin covers ``length / bins`` cells; its start is floored and its end ceiled, so neighbouring
    bins may share a cell. Edges are clipped to the map ``[0, limit]``; a clipped-away bin has ``lo == hi``.
    """
    bin_size = length.to(dtype)[:, None] / bins  # (K, 1), in the input's dtype like the C++ kernel
    i = torch.arange(bins, device=start.device, dtype=dtype)[None, :]
    lo = torch.floor(i * bin_size).long() + start[:, None]
    hi = torch.ceil((i + 1) * bin_size).long() + start[:, None]
    return lo.clamp(0, limit), hi.clamp(0, limit)


def _window(lo: Tensor, hi: Tensor, outside: int) -> Tensor:
    """Indices of every cell of every bin, padded to the largest bin: ``Tensor[K, bins, B]``.

    Padding entries (past the bin's end) point to ``outside``, the index of an all ``-inf`` cell, so they
    never win the max.
    """
    size = max(int((hi - lo).max()), 1)
    index = lo[..., None] + torch.arange(size, device=lo.device)  # (K, bins, B)
    return torch.where(index < hi[..., None], index, outside)


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Max-pool every region of interest onto an ``oh x ow`` grid. -> ``Tensor[K, C, oh, ow]``.

    Args:
        input (Tensor[N, C, H, W]): the feature maps of a batch of N images.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): RoIs as ``(batch_index, x1, y1, x2, y2)`` rows, or one
            xyxy tensor per image; coordinates in *image* pixels.
        output_size (int or (oh, ow)): the fixed grid every RoI is pooled to (7 x 7 in Fast R-CNN).
        spatial_scale (float): feature-map cells per image pixel, e.g. 1/16 for a stride-16 backbone.

    The quantisation, exactly as torchvision's kernel: corners scaled and rounded half away from zero;
    a box is ``x2 - x1 + 1`` cells wide (at least 1, so a zero-size box still pools its one cell);
    bin ``p`` spans ``[floor(p * w / ow), ceil((p + 1) * w / ow))``, clipped to the map; a bin left
    empty by clipping outputs 0. The gradient flows to the first maximum of each bin (row-major).
    """
    rois = _prepare_rois(input, boxes)
    oh, ow = _pair(output_size)
    N, C, H, W = input.shape
    if rois.shape[0] == 0:
        return input.new_zeros(0, C, oh, ow)
    scale = torch.tensor(spatial_scale, dtype=input.dtype, device=input.device)
    x1, y1, x2, y2 = (_round_half_away(rois[:, i] * scale).long() for i in range(1, 5))
    roi_w, roi_h = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)  # malformed boxes -> 1 cell
    h_lo, h_hi = _bin_edges(y1, roi_h, oh, H, input.dtype)  # (K, oh)
    w_lo, w_hi = _bin_edges(x1, roi_w, ow, W, input.dtype)  # (K, ow)
    rows, cols = _window(h_lo, h_hi, H), _window(w_lo, w_hi, W)  # (K, oh, BH), (K, ow, BW)
    # Channels last, plus one row and one column of -inf that the padding indices point to.
    cells_map = F.pad(input.permute(0, 2, 3, 1), (0, 0, 0, 1, 0, 1), value=-math.inf)  # (N, H+1, W+1, C)
    # Gather every cell of every bin at once (no loop over pixels): the indices broadcast to
    # (K, oh, ow, BH, BW), each picking a C-vector.
    batch = rois[:, 0].long()[:, None, None, None, None]
    cells = cells_map[batch, rows[:, :, None, :, None], cols[:, None, :, None, :]]  # (K, oh, ow, BH, BW, C)
    # max() returns the first maximum in row-major order, which is where torchvision sends the gradient
    pooled = cells.flatten(3, 4).max(dim=3).values  # (K, oh, ow, C)
    empty = (h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :]  # (K, oh, ow): bins clipped away
    pooled = pooled.masked_fill(empty[..., None], 0.0)
    return pooled.permute(0, 3, 1, 2).contiguous()  # (K, C, oh, ow)
