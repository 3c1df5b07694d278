"""RoI Align (Mask R-CNN): RoI pooling without rounding, by bilinear sampling.

Taught in notebook 07 (Mask R-CNN), after RoI pooling in notebook 04 showed its quantisation error.

Each of the ``oh x ow`` bins of a RoI is sampled on a regular ``gh x gw`` grid of points at *real*
coordinates; each point is read from the feature map by bilinear interpolation of its 4 neighbouring
cells, and the bin outputs the average of its points. Nothing is rounded, so a box moved by a
fraction of a cell changes the output (with RoI pooling it often does not).

The idea written as the code computes it: bilinear interpolation along y and along x are independent,
and averaging over a grid of points is linear, so for one RoI the whole operation is a matrix product
``out[c] = Wy @ x[c] @ Wx.T``, where ``Wy`` (oh x H) holds, for every output row, the interpolation
weights of its sample rows, and ``Wx`` (ow x W) the same for columns. Building those two small
matrices is the whole algorithm; the products are one ``einsum``. Same signature, result and gradient
as ``torchvision.ops.roi_align``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coursekit.checks import as_pair
from coursekit.ops.rois import scaled_rois
from coursekit.runtime import threads

__all__ = ["roi_align"]


def _sample_points(start: Tensor, length: Tensor, bins: int, grid: Tensor, max_grid: int) -> Tensor:
    """Coordinates of the sample points, ``Tensor[K, bins, G]``: ``grid[k]`` evenly spaced points per bin.

    Point ``i`` of bin ``p`` sits at ``start + p * bin + (i + 0.5) * bin / grid``, the centre of the
    i-th of ``grid`` equal slices of the bin (same expression order as torchvision's kernel).
    """
    bin_size = (length / bins)[:, None, None]  # (K, 1, 1)
    p = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(max_grid, device=start.device, dtype=start.dtype)[None, None, :]
    return start[:, None, None] + p * bin_size + (i + 0.5) * bin_size / grid[:, None, None].to(start.dtype)


def _interpolation_matrix(coords: Tensor, used: Tensor, grid: Tensor, size: int) -> Tensor:
    """Weights ``Tensor[K, bins, size]``: row ``[k, p]`` averages bin ``p``'s samples along one axis.

    Each sample at real coordinate ``y`` contributes ``1 - (y - floor y)`` to cell ``floor y`` and
    ``y - floor y`` to the next cell. The boundary rules are torchvision's: a sample beyond
    ``[-1, size]`` reads nothing (weight 0); one in ``[-1, 0]`` is read at 0; one past the last cell
    centre is read at the last cell.
    """
    valid = used & (coords >= -1.0) & (coords <= size)  # (K, bins, G)
    y = coords.clamp(min=0)
    low = y.long()  # truncation == floor here because y >= 0
    at_end = low >= size - 1
    low = torch.where(at_end, size - 1, low)
    high = torch.where(at_end, size - 1, low + 1)
    frac = torch.where(at_end, torch.zeros_like(y), y - low)  # weight of the `high` cell
    per_point = valid.to(y.dtype) / grid.clamp(min=1)[:, None, None].to(y.dtype)  # average over the grid
    weights = y.new_zeros(*coords.shape[:2], size)
    weights.scatter_add_(2, low, (1 - frac) * per_point)
    weights.scatter_add_(2, high, frac * per_point)
    return weights


def _axis_weights(lo: Tensor, hi: Tensor, bins: int, size: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """The interpolation matrix of one axis for all RoIs: ``Tensor[K, bins, size]``."""
    length = hi - lo
    if not aligned:
        length = length.clamp(min=1.0)  # legacy behaviour: malformed RoIs are forced to 1 x 1
    if sampling_ratio > 0:
        grid = torch.full_like(length, sampling_ratio, dtype=torch.long)
    else:  # adaptive: about one sample per feature cell, ceil(roi_size / bins)
        grid = torch.ceil(length / bins).long()
    max_grid = max(int(grid.max()), 1)
    # a RoI whose grid is empty (aligned, zero size) gets no samples; grid >= 1 only keeps coords finite
    coords = _sample_points(lo, length, bins, grid.clamp(min=1), max_grid)  # (K, bins, G)
    used = torch.arange(max_grid, device=lo.device)[None, None, :] < grid[:, None, None]
    return _interpolation_matrix(coords, used, grid, size)


@threads(1)  # small tensor operations: one CPU thread, restored after (see roi_pool)
def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Bilinearly sample and average every RoI onto an ``oh x ow`` grid. -> ``Tensor[K, C, oh, ow]``.

    Args:
        input (Tensor[N, C, H, W]): the feature maps of a batch of N images.
        boxes (Tensor[K, 5] or list[Tensor[L, 4]]): RoIs as ``(batch_index, x1, y1, x2, y2)`` rows, or one
            xyxy tensor per image; coordinates in *image* pixels.
        output_size (int or (oh, ow)): the grid every RoI is sampled to (14 x 14 for Mask R-CNN's masks).
        spatial_scale (float): feature-map cells per image pixel, e.g. 1/16 for a stride-16 backbone.
        sampling_ratio (int): sample points per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(roi_size / output_size)`` for each RoI.
        aligned (bool): shift the box by -0.5 cell so a cell's value sits at its centre (pixel-exact,
            what Detectron2 uses). ``False`` keeps the original Mask R-CNN behaviour.

    Equal to ``torchvision.ops.roi_align`` (and its gradient w.r.t. ``input``) up to float rounding.
    """
    batch, corners = scaled_rois(input, boxes, spatial_scale)  # (K,), (K, 4) in feature-map cells
    oh, ow = as_pair(output_size, "output_size")
    N, C, H, W = input.shape
    K = corners.shape[0]
    if K == 0:
        return input.new_zeros(0, C, oh, ow)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (corners - offset).unbind(1)
    wy = _axis_weights(y1, y2, oh, H, sampling_ratio, aligned)  # (K, oh, H)
    wx = _axis_weights(x1, x2, ow, W, sampling_ratio, aligned)  # (K, ow, W)
    out = input.new_zeros(K, C, oh, ow)
    # One loop over the images of the batch (not over pixels): each image's RoIs share its feature map,
    # which avoids copying the map once per RoI.
    for n in batch.unique().tolist():
        sel = batch == n
        cols = torch.einsum("chw,kqw->kchq", input[n], wx[sel])  # (k, C, H, ow): sample along x
        out[sel] = torch.einsum("kph,kchq->kcpq", wy[sel], cols)  # (k, C, oh, ow): then along y
    return out
