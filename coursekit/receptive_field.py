"""Receptive field: how many input pixels one output pixel of a conv stack can see.

Taught in notebook 05 (deck 004: "can we detect a 100 px object using conv-1 features?") and used
again in notebook 06 (it grows linearly with convolutions, multiplicatively with striding; dilation
grows it without adding parameters).

The arithmetic, layer by layer, starting from the input (jump 1, receptive field 1):
``jump_out = jump_in * stride`` (distance in input pixels between neighbouring outputs) and
``rf_out = rf_in + (kernel - 1) * jump_in``. Deck 004's table: (kernel 5, stride 2) -> (2, 5);
(3, 1) -> (2, 9); (7, 3) -> (6, 21). :func:`empirical_receptive_field` measures the same number on a
real network from the gradient of one output pixel w.r.t. the input.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["receptive_field", "layers_of", "receptive_field_map", "empirical_receptive_field"]


def receptive_field(layers: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(jump, receptive_field)`` after each ``(kernel, stride)`` layer, in input pixels.

    >>> receptive_field([(5, 2), (3, 1), (7, 3)])  # deck 004's table
    [(2, 5), (2, 9), (6, 21)]

    Padding does not change the receptive field (only where it sits); for a dilated convolution pass
    the effective kernel ``dilation * (kernel - 1) + 1`` (:func:`layers_of` does).
    """
    jump, rf, table = 1, 1, []
    for kernel, stride in layers:
        if kernel < 1 or stride < 1:
            raise ValueError(f"kernel and stride must be >= 1, got (kernel={kernel}, stride={stride})")
        rf += (kernel - 1) * jump  # the new kernel spans kernel - 1 steps of the previous layer's jump
        jump *= stride
        table.append((jump, rf))
    return table


def _square(value: int | tuple[int, ...], what: str, layer: nn.Module) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(
            f"{layer} has a non-square {what} {value}; only square kernels/strides are supported"
        )
    return value[0]


def layers_of(model: nn.Module) -> list[tuple[int, int]]:
    """``(kernel, stride)`` of every Conv2d / MaxPool2d / AvgPool2d of ``model``, in registration order.

    Meant for ``nn.Sequential`` stacks (nested ones too), where registration order is the forward order.
    Other layers (ReLU, BatchNorm, ...) do not change the receptive field and are skipped. A dilated
    layer counts with its effective kernel ``dilation * (kernel - 1) + 1``.
    """
    layers = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel = _square(m.kernel_size, "kernel", m)
            stride = _square(m.stride, "stride", m)
            dilation = _square(getattr(m, "dilation", 1), "dilation", m)
            layers.append((dilation * (kernel - 1) + 1, stride))
    return layers


def _positive_copy(model: nn.Module) -> nn.Module:
    """A copy in which no gradient path can cancel: conv weights 1, biases 0, BatchNorm removed,
    max pooling (which passes the gradient to one pixel only) replaced by average pooling."""
    model = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.MaxPool2d):
            replacement: nn.Module = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            replacement = nn.Identity()
        else:
            if isinstance(m, nn.Conv2d):
                with torch.no_grad():
                    m.weight.fill_(1.0)
                    if m.bias is not None:
                        m.bias.zero_()
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], replacement)
    return model


def _in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError("model has no Conv2d layer; pass in_channels explicitly")


def receptive_field_map(
    model: nn.Module,
    input_size: int | tuple[int, int],
    *,
    in_channels: int | None = None,
    positive: bool = False,
) -> Tensor:
    """``|d out[centre] / d input|`` summed over channels: ``Tensor[H, W]``, the input pixels the centre
    output pixel depends on and how strongly.

    With ``positive=False`` this is the *effective* receptive field of the model as it is (Luo et al.,
    2016: a Gaussian-looking blob, smaller than the theoretical one); with ``positive=True`` every pixel
    of the theoretical receptive field gets a non-zero value (see :func:`empirical_receptive_field`).
    """
    H, W = (input_size, input_size) if isinstance(input_size, int) else input_size
    channels = _in_channels(model) if in_channels is None else in_channels
    net = _positive_copy(model) if positive else model
    x = torch.ones(1, channels, H, W, requires_grad=True)  # ones: every ReLU of the positive copy is open
    out = net(x)  # (1, C_out, h, w)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    return x.grad[0].abs().sum(dim=0)


def empirical_receptive_field(
    model: nn.Module, input_size: int | tuple[int, int], *, in_channels: int | None = None
) -> int:
    """Measured receptive field (pixels, along the height) of the centre output pixel of ``model``.

    Backpropagates from that one output pixel and measures the extent of the input pixels with a
    non-zero gradient. So that no contribution cancels by chance, it runs on a copy whose convolutions
    all have weight 1 and whose max pools average instead (see :func:`receptive_field_map`); the extent
    then depends on the architecture only, and equals :func:`receptive_field` of :func:`layers_of`.

    Raises ValueError if the receptive field reaches the border of the input: give a larger ``input_size``.
    """
    grad = receptive_field_map(model, input_size, in_channels=in_channels, positive=True)
    rows = grad.sum(dim=1).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError("the centre output does not depend on the input; is the model made of convolutions?")
    first, last = int(rows[0]), int(rows[-1])
    if first == 0 or last == grad.shape[0] - 1:
        raise ValueError(
            f"the receptive field reaches the border of the {tuple(grad.shape)} input; "
            "use a larger input_size"
        )
    return last - first + 1
