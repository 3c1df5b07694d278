"""Fixed (not learned) upsampling: nearest neighbour, "bed of nails", max unpooling.

Taught in notebook 06 (semantic segmentation), before the learnable transposed convolution
(:mod:`coursekit.ops.conv_transpose`). Deck 000: nearest neighbour copies each value into its
``f x f`` block; bed of nails puts it in the block's top-left corner and zeros elsewhere; max
unpooling (SegNet) puts it back where the matching max-pool found its maximum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coursekit.ops.conv_transpose import conv_transpose2d

__all__ = ["nearest_upsample", "bed_of_nails", "max_unpool2d", "checkerboard_demo"]


def _check_map(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a Tensor[N, C, H, W], got {getattr(x, 'shape', type(x))}")


def _check_factor(factor: int) -> None:
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")


def nearest_upsample(x: Tensor, factor: int) -> Tensor:
    """Copy every value into a ``factor x factor`` block: ``Tensor[N, C, H, W] -> Tensor[N, C, fH, fW]``.

    Same as ``F.interpolate(x, scale_factor=factor, mode="nearest")``.
    """
    _check_map(x)
    _check_factor(factor)
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def bed_of_nails(x: Tensor, factor: int) -> Tensor:
    """Each value at the top-left corner of its ``factor x factor`` block, zeros elsewhere.

    ``Tensor[N, C, H, W] -> Tensor[N, C, fH, fW]``: max unpooling with every "argmax" in the corner.
    """
    _check_map(x)
    _check_factor(factor)
    N, C, H, W = x.shape
    out = x.new_zeros(N, C, H * factor, W * factor)
    out[:, :, ::factor, ::factor] = x
    return out


def _unpool_size(size: int, kernel: int, stride: int, padding: int) -> int:
    # the size max_pool2d would have had to take to produce `size` outputs
    return (size - 1) * stride - 2 * padding + kernel


def max_unpool2d(
    x: Tensor,
    indices: Tensor,
    kernel_size: int,
    stride: int | None = None,
    *,
    padding: int = 0,
    output_size: tuple[int, int] | None = None,
) -> Tensor:
    """Put every value back where max pooling found it, zeros elsewhere. -> ``Tensor[N, C, H_out, W_out]``.

    Args:
        x (Tensor[N, C, H, W]): the values to place (the pooled map, or a decoder's features).
        indices (Tensor[N, C, H, W] int64): ``max_pool2d(..., return_indices=True)``'s indices: the flat
            position ``row * W_out + col`` of each maximum inside its ``H_out x W_out`` plane.
        kernel_size, stride, padding: those of the max pooling (stride defaults to kernel_size).
        output_size ((H_out, W_out) | None): the pooled map's size before pooling; needed when it was
            odd. Default ``(H - 1) * stride - 2 * padding + kernel_size``.

    Same as ``torch.nn.functional.max_unpool2d`` (SegNet's decoder).
    """
    _check_map(x)
    if not isinstance(indices, Tensor) or indices.shape != x.shape or indices.is_floating_point():
        raise ValueError(f"indices must be an integer tensor of x's shape {list(x.shape)}")
    stride = kernel_size if stride is None else stride
    N, C, H, W = x.shape
    if output_size is None:
        output_size = (
            _unpool_size(H, kernel_size, stride, padding),
            _unpool_size(W, kernel_size, stride, padding),
        )
    H_out, W_out = (int(s) for s in tuple(output_size)[-2:])
    if indices.numel() and (indices.min() < 0 or indices.max() >= H_out * W_out):
        raise ValueError(
            f"indices must lie in [0, {H_out * W_out}) for a {H_out} x {W_out} output; pass the pooled "
            "input's size as output_size"
        )
    out = x.new_zeros(N, C, H_out * W_out)
    # scatter, not scatter_add: overlapping windows that picked the same pixel write the same value
    out = out.scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(N, C, H_out, W_out)


def checkerboard_demo(size: int = 6, kernel_size: int = 3, stride: int = 2) -> Tensor:
    """How many filter copies land on each output pixel: ``Tensor[H_out, H_out]`` of counts.

    A transposed convolution of an all-ones input with an all-ones filter counts the overlaps. When
    ``kernel_size`` is not a multiple of ``stride`` the counts alternate (1, 2, 1, 2 ... for 3 / 2),
    which is the checkerboard artefact of Odena et al. (2016); ``kernel_size=4, stride=2`` is even.
    """
    ones = torch.ones(1, 1, size, size)
    return conv_transpose2d(ones, torch.ones(1, 1, kernel_size, kernel_size), stride)[0, 0]
