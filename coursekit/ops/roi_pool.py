"""RoI pooling (Fast R-CNN): cut a box out of a feature map and max-pool it onto a fixed grid.

Taught in notebook 04 (the R-CNN family), where it is compared with RoI Align (notebook 07).

Every RoI, whatever its size, becomes a ``C x oh x ow`` tensor that the per-RoI head can take:
the box is projected onto the feature map (``* spatial_scale``, *rounded* to whole feature cells),
split into ``oh x ow`` bins whose edges are rounded again (start floored, end ceiled), and each bin
keeps the maximum of the cells it covers. The two roundings are the "quantisation" that RoI Align
removes. Same signature and, to the bit, the same result and gradient as ``torchvision.ops.roi_pool``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coursekit.checks import as_pair
from coursekit.ops.rois import scaled_rois
from coursekit.runtime import threads

__all__ = ["roi_pool"]


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


def _combine_into(values: Tensor, index: Tensor | None, out: int, src: int, step: int, dim: int) -> None:
    """Table entry ``out`` from entry ``src``: at every cell, the better of the block starting there
    and the block starting ``step`` cells further along ``dim`` (of ``[N, H, W, C]``: 1 = y, 2 = x).

    The callers keep the first block's cells all earlier in row-major order (the same row further
    left, or rows above), so on a tie it wins: every entry keeps the *first* maximum of its block.
    Cells whose second block would start outside the map keep the smaller block; no query reads them.
    """
    size = max(values.shape[dim + 1] - step, 0)  # cells that have a second block
    tail = values.shape[dim + 1] - size
    values[out].narrow(dim, size, tail).copy_(values[src].narrow(dim, size, tail))
    first, second = values[src].narrow(dim, 0, size), values[src].narrow(dim, step, size)
    if index is None:  # no gradient wanted: the maximum is all we need
        torch.maximum(first, second, out=values[out].narrow(dim, 0, size))
        return
    index[out].narrow(dim, size, tail).copy_(index[src].narrow(dim, size, tail))
    second_wins = second > first
    values[out].narrow(dim, 0, size).copy_(torch.where(second_wins, second, first))
    index[out].narrow(dim, 0, size).copy_(
        torch.where(second_wins, index[src].narrow(dim, step, size), index[src].narrow(dim, 0, size))
    )


def _range_max_tables(cells: Tensor, levels_y: int, levels_x: int, with_index: bool) -> tuple[Tensor, Tensor | None]:
    """Max (and, ``with_index``, where it is) of every ``2**jy x 2**jx`` block of the map.

    ``cells``: ``Tensor[N, H, W, C]``. Returns values and row-major cell indices ``y * W + x`` (or None),
    both ``Tensor[levels_y * levels_x, N, H, W, C]``: entry ``[jy * levels_x + jx, n, y, x]`` is the
    first maximum of the ``2**jy x 2**jx`` block whose top-left cell is ``(y, x)``. A block is two
    blocks of the level below side by side, so the whole table costs a few element-wise maxima of the
    map (a "sparse table" for range-maximum queries).
    """
    N, H, W, C = cells.shape
    values = cells.new_empty(levels_y * levels_x, N, H, W, C)
    values[0] = cells
    index = None
    if with_index:
        index = torch.empty(levels_y * levels_x, N, H, W, C, dtype=torch.int32, device=cells.device)
        index[0] = torch.arange(H * W, dtype=torch.int32, device=cells.device).view(1, H, W, 1)
    for jy in range(levels_y):
        for jx in range(levels_x):
            level = jy * levels_x + jx
            # Widen one-row blocks first, then stack them: both ways the first block's cells all come
            # earlier in row-major order (widening a tall block would break that).
            if jy > 0:  # twice as tall: the block and the one below it
                _combine_into(values, index, level, level - levels_x, 2 ** (jy - 1), 1)
            elif jx > 0:  # twice as wide (one row): the block and the one to its right
                _combine_into(values, index, level, level - 1, 2 ** (jx - 1), 2)
    return values, index


def _floor_log2(n: Tensor) -> Tensor:
    """``floor(log2(n))`` of positive integers, exactly (no float rounding)."""
    out = torch.zeros_like(n)
    for j in range(1, int(n.max()).bit_length()):
        out += (n >= 2**j).long()
    return out


# A few dozen tensor operations on small tensors: one CPU thread, restored after (on a busy CPU several
# threads wait for each other at every operation: 2-9x slower than torchvision there, 1x on one thread).
@threads(1)
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

    How, without a loop over RoIs or bins: a bin ``[lo, hi)`` of size ``b`` is covered by two spans of
    length ``2**j`` (the largest power of two ``<= b``), ``[lo, lo + 2**j)`` and ``[hi - 2**j, hi)``; they
    may overlap, which does not change a maximum. So a bin's max is the max of 4 block maxima (2 spans
    along y times 2 along x), read from a table of every block's max computed once per feature map.
    """
    batch, corners = scaled_rois(input, boxes, spatial_scale)  # (K,), (K, 4) in feature-map cells
    oh, ow = as_pair(output_size, "output_size")
    N, C, H, W = input.shape
    K = corners.shape[0]
    if K == 0:
        return input.new_zeros(0, C, oh, ow)
    x1, y1, x2, y2 = _round_half_away(corners).long().unbind(1)
    roi_w, roi_h = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)  # malformed boxes -> 1 cell
    h_lo, h_hi = _bin_edges(y1, roi_h, oh, H, input.dtype)  # (K, oh)
    w_lo, w_hi = _bin_edges(x1, roi_w, ow, W, input.dtype)  # (K, ow)
    empty = (h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :]  # (K, oh, ow): bins clipped away
    # The two spans of each bin along each axis (an empty bin reads a valid cell; it is zeroed below).
    jy, jx = _floor_log2((h_hi - h_lo).clamp(min=1)), _floor_log2((w_hi - w_lo).clamp(min=1))  # (K, oh), (K, ow)
    ys = torch.stack([h_lo, (h_hi - 2**jy).clamp(min=0)], -1).clamp(max=H - 1)  # (K, oh, 2): first rows
    xs = torch.stack([w_lo, (w_hi - 2**jx).clamp(min=0)], -1).clamp(max=W - 1)  # (K, ow, 2): first columns
    levels_y, levels_x = int(jy.max()) + 1, int(jx.max()) + 1
    # The gradient must reach the first maximum of each bin (row-major): only then track where it is.
    with_index = input.requires_grad and torch.is_grad_enabled()
    values, where = _range_max_tables(input.detach().permute(0, 2, 3, 1), levels_y, levels_x, with_index)
    # Row of the tables' flattened [level, n, y, x] for each bin's 4 blocks: (K, oh, ow, 4)
    level = jy[:, :, None, None] * levels_x + jx[:, None, :, None]
    n = batch[:, None, None, None]
    y = ys[:, :, None, :, None].expand(K, oh, ow, 2, 2).reshape(K, oh, ow, 4)
    x = xs[:, None, :, None, :].expand(K, oh, ow, 2, 2).reshape(K, oh, ow, 4)
    row = (((level * N + n) * H + y) * W + x).flatten()
    v = values.view(-1, C).index_select(0, row).view(K, oh, ow, 4, C)
    if where is None:
        pooled = v.amax(dim=3)  # (K, oh, ow, C)
    else:
        i = where.view(-1, C).index_select(0, row).view(K, oh, ow, 4, C)
        # the first maximum of the bin: among the blocks holding the bin's max, the earliest cell
        best = torch.where(v == v.amax(dim=3, keepdim=True), i, H * W).amin(dim=3)  # (K, oh, ow, C)
        # Read the winning cell from the input itself: the gradient flows to that one cell, as in torchvision.
        flat = input.permute(0, 2, 3, 1).reshape(N * H * W, C)
        winner = (n * (H * W) + best.long()).view(K * oh * ow, C)
        pooled = flat.gather(0, winner).view(K, oh, ow, C)
    pooled = pooled.masked_fill(empty[..., None], 0.0)
    return pooled.permute(0, 3, 1, 2).contiguous()  # (K, C, oh, ow)
