"""Transposed convolution ("deconvolution", "fractionally strided convolution"), as the lecture draws it.

Taught in notebook 06 (semantic segmentation: learnable upsampling in FCN / U-Net).

Every input pixel stamps a copy of the filter, multiplied by the pixel's value, onto the output; with
stride ``s`` the stamps of neighbouring pixels are ``s`` output pixels apart, and where the copies
overlap they are summed. Deck 002's example: a 2 x 2 input, a 3 x 3 filter, stride 2, padding 1
(plus ``output_padding=1``) gives a 4 x 4 output. ``padding`` crops ``padding`` pixels off every side
of that sum; it undoes the padding of the convolution this operation transposes.

:func:`conv_transpose2d` builds all the weighted copies at once and lets ``fold`` (col2im) sum them
into place; :func:`conv_transpose2d_steps` stamps them one input pixel at a time for the step-through
widget. Both equal ``torch.nn.functional.conv_transpose2d``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor

from coursekit.checks import as_pair

__all__ = ["conv_transpose2d", "conv_transpose2d_steps", "conv_transpose_output_size"]


def conv_transpose_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, output_padding: int = 0
) -> int:
    """Output length of a transposed convolution along one axis: ``(size - 1) * stride - 2 * padding + kernel
    + output_padding``: the last input pixel's stamp starts at ``(size - 1) * stride``, ``kernel`` long."""
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    *,
    output_padding: int | tuple[int, int] = 0,
    bias: Tensor | None = None,
) -> Tensor:
    """Transposed convolution. -> ``Tensor[N, Cout, H_out, W_out]``.

    Args:
        input (Tensor[N, Cin, H, W]): the low-resolution feature map.
        weight (Tensor[Cin, Cout, kh, kw]): torch's layout for transposed convolutions (``Cin`` first,
            the transpose of ``Conv2d``'s ``[Cout, Cin, kh, kw]``).
        stride, padding: as in ``torch.nn.functional.conv_transpose2d``.
        output_padding: extra rows/columns added at the bottom/right (``< stride``), to reach an even size.
        bias (Tensor[Cout] | None): added to every output pixel.

    ``H_out = (H - 1) * stride - 2 * padding + kh + output_padding`` (:func:`conv_transpose_output_size`).
    Note the argument order follows the lecture (stride, padding after the weight); ``bias`` is keyword-only.
    """
    _check_conv_args(input, weight)
    sh, sw = as_pair(stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    oph, opw = as_pair(output_padding, "output_padding", 0)
    if oph >= sh or opw >= sw:
        raise ValueError(f"output_padding {output_padding} must be smaller than stride {stride}")
    N, Cin, H, W = input.shape
    _, Cout, kh, kw = weight.shape
    H_out = conv_transpose_output_size(H, kh, sh, ph, oph)
    W_out = conv_transpose_output_size(W, kw, sw, pw, opw)
    if H_out <= 0 or W_out <= 0:
        raise ValueError(f"padding {padding} crops away the whole {H_out} x {W_out} output; use less padding")
    # 1. one weighted copy of the filter per input pixel: copies[n, (cout, i, j), (y, x)], as one matrix
    #    product [Cout*kh*kw, Cin] @ [N, Cin, H*W] that lands in this layout (an einsum wrote another layout
    #    and copied it: 2x slower at one thread)
    copies = weight.reshape(Cin, Cout * kh * kw).t().matmul(input.reshape(N, Cin, H * W))
    # 2. fold (col2im) puts the copy of pixel (y, x) at output (y * stride, x * stride) and *sums* the
    #    overlaps; its padding argument crops the border, exactly the inverse of conv's zero padding.
    out = F.fold(copies, (H_out, W_out), (kh, kw), stride=(sh, sw), padding=(ph, pw))
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def _check_conv_args(input: Tensor, weight: Tensor) -> None:
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"input must be a Tensor[N, Cin, H, W], got {getattr(input, 'shape', type(input))}")
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(
            f"weight must be a Tensor[Cin, Cout, kh, kw], got {getattr(weight, 'shape', type(weight))}"
        )
    if weight.shape[0] != input.shape[1]:
        raise ValueError(
            f"weight has {weight.shape[0]} input channels (dim 0) but input has {input.shape[1]}; "
            "transposed-conv weights are [Cin, Cout, kh, kw] (a Conv2d weight is [Cout, Cin, kh, kw])"
        )


def conv_transpose2d_steps(
    input_2d: Tensor, weight_2d: Tensor, stride: int = 1, padding: int = 0
) -> Iterator[tuple[int, int, Tensor]]:
    """Stamp the filter one input pixel at a time: yields ``(row, col, partial_output)`` after each pixel.

    Args:
        input_2d (Tensor[H, W]): a single-channel input.
        weight_2d (Tensor[kh, kw]): a single filter.
        stride, padding: as in :func:`conv_transpose2d`.

    ``partial_output`` (a new ``Tensor[H_out, W_out]`` each step) holds the sum of the copies stamped so
    far, in row-major order; the last one equals ``conv_transpose2d(input_2d[None, None],
    weight_2d[None, None], stride, padding)[0, 0]``. For the step-through widget of notebook 06.
    """
    if input_2d.dim() != 2 or weight_2d.dim() != 2:
        raise ValueError(
            f"expected a 2-D input and a 2-D filter, got {list(input_2d.shape)} and {list(weight_2d.shape)}"
        )
    as_pair(stride, "stride", 1)
    as_pair(padding, "padding", 0)
    H, W = input_2d.shape
    kh, kw = weight_2d.shape
    # stamp on the uncropped canvas, crop `padding` off each side when showing it
    canvas = input_2d.new_zeros(
        conv_transpose_output_size(H, kh, stride), conv_transpose_output_size(W, kw, stride)
    )
    bottom, right = canvas.shape[0] - padding, canvas.shape[1] - padding
    if bottom <= padding or right <= padding:
        raise ValueError(f"padding {padding} crops away the whole output; use less padding")
    for row in range(H):
        for col in range(W):  # a loop over pixels on purpose: the widget shows one stamp per step
            top, left = row * stride, col * stride
            canvas[top : top + kh, left : left + kw] += input_2d[row, col] * weight_2d
            yield row, col, canvas[padding:bottom, padding:right].clone()
