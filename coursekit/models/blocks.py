"""Building blocks shared by the course's networks: one conv block, one small backbone, one input check.

- :func:`conv_bn_act`: conv -> BatchNorm -> activation, 'same' padding. YOLO / SSD (LeakyReLU 0.1),
  the segmentation nets and the localization net (ReLU), the hourglass (1x1, ReLU) and Deep Image
  Prior (LeakyReLU 0.2, reflection padding) all build on it.
- :class:`TinyDarknet`: stages that each halve the resolution; the body of YOLO and SSD (notebook 05).
- :func:`check_square_images`: the error a fixed-size detector raises on the wrong input.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["conv_bn_act", "TinyDarknet", "check_square_images"]


def conv_bn_act(
    c_in: int,
    c_out: int,
    kernel: int = 3,
    stride: int = 1,
    dilation: int = 1,
    act: nn.Module | None = None,
    *,
    bias: bool = False,
    padding_mode: str = "zeros",
) -> nn.Sequential:
    """``[B, c_in, H, W] -> [B, c_out, H / stride, W / stride]``: conv, BatchNorm, activation.

    'Same' padding (``dilation * (kernel // 2)``, also when dilated), so only ``stride`` changes the size.
    ``act``: the activation module (default ``nn.ReLU(inplace=True)``). ``bias``: the conv's bias, off by
    default since BatchNorm adds its own. ``padding_mode="reflect"`` keeps borders from being pulled to 0
    (Deep Image Prior). The result is ``nn.Sequential(conv, bn, act)``: parameters ``0.weight``, ``1.*``.
    """
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=bias,
                  padding_mode=padding_mode if kernel > 1 else "zeros"),
        nn.BatchNorm2d(c_out),
        act if act is not None else nn.ReLU(inplace=True),
    )


def _leaky(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """YOLO's block: 3x3 conv + BatchNorm + LeakyReLU(0.1)."""
    return conv_bn_act(c_in, c_out, 3, stride, act=nn.LeakyReLU(0.1))


class TinyDarknet(nn.Module):
    """A small backbone: stages that each halve the resolution. ``forward`` -> the list of stage outputs.

    Stage ``i`` (0-based) has stride ``2 ** (i + 1)`` and ``widths[i]`` channels: a strided conv, then
    (after the first stage) a second conv at the new resolution. With the default five widths the
    strides are 2, 4, 8, 16, 32; ``x [N, 3, H, W]`` -> ``[N, widths[i], H / 2**(i+1), W / 2**(i+1)]``.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 128), in_channels: int = 3):
        super().__init__()
        if len(widths) == 0 or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive channel counts, got {widths}")
        stages, c_in = [], in_channels
        for i, c in enumerate(widths):
            layers = [_leaky(c_in, c, stride=2)] + ([_leaky(c, c)] if i > 0 else [])
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.widths = tuple(widths)
        self.strides = tuple(2 ** (i + 1) for i in range(len(widths)))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def check_square_images(x: Tensor, image_size: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a ``Tensor[N, 3, image_size, image_size]``, saying how to fix it."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be a Tensor[N, 3, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"this model was built for {image_size}x{image_size} images, got {tuple(x.shape[-2:])}; "
            f"resize the images or build the model with image_size={x.shape[-1]}"
        )
