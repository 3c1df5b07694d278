"""The Deep Image Prior network: an encoder-decoder with skip connections, fed fixed noise.

Ulyanov, Vedaldi and Lempitsky, "Deep Image Prior" (CVPR 2018); deck 004, taught in notebook
``09_deep_image_prior``. The net is never trained on data: it starts from a random initialisation
and is fitted to ONE corrupted image (see :func:`coursekit.dip.fit_dip`). What it can represent
easily (smooth, multi-scale, translation-invariant structure) comes before what it can represent
only with effort (noise): the architecture itself is the prior.

The figure the code follows (one level, repeated ``depth`` times inside itself)::

    x ──► down (stride-2 conv) ──► [next level] ──► up (x2) ──┐
    └───► skip (1x1 conv, few channels) ──────────────────────┴─► concat ─► conv ─► out

Deck 004's words for it: convolutions ("translation invariance"), bottleneck and up-sampling,
multi-resolution ("image pyramids").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from coursekit.models.blocks import conv_bn_act
from coursekit.models.registry import Smoke, images, register_model

__all__ = ["SkipNet", "make_noise"]

Upsample = Literal["bilinear", "nearest"]
_UPSAMPLE_MODES: tuple[str, ...] = get_args(Upsample)
_LEAKY_SLOPE = 0.2  # the DIP paper's LeakyReLU slope
_NOISE_SCALE = 0.1  # the DIP paper's input: uniform noise in [0, 0.1)


def _conv_block(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """conv -> batch norm -> LeakyReLU; reflection padding so borders are not pulled towards 0."""
    return conv_bn_act(in_ch, out_ch, kernel_size, stride, act=nn.LeakyReLU(_LEAKY_SLOPE, inplace=True), bias=True,
                       padding_mode="reflect")


class _Level(nn.Module):
    """One level of the encoder-decoder, holding the deeper levels inside it (like an hourglass).

    ``x [B, in_ch, H, W] -> [B, widths[0], H, W]``: half resolution inside, back to full at the exit.
    """

    def __init__(self, in_ch: int, widths: Sequence[int], skips: Sequence[int], kernel_size: int,
                 upsample: str):
        super().__init__()
        width, skip = widths[0], skips[0]
        self.skip = _conv_block(in_ch, skip, 1) if skip > 0 else None
        self.down = nn.Sequential(_conv_block(in_ch, width, kernel_size, stride=2),
                                  _conv_block(width, width, kernel_size))
        # The recursion mirrors the figure: the next level sits between down and up.
        self.inner = (_Level(width, widths[1:], skips[1:], kernel_size, upsample)
                      if len(widths) > 1 else nn.Identity())
        self.up = nn.Upsample(scale_factor=2, mode=upsample)
        merged = skip + width
        self.merge = nn.Sequential(nn.BatchNorm2d(merged), _conv_block(merged, width, kernel_size),
                                   _conv_block(width, width, 1))

    def forward(self, x: Tensor) -> Tensor:
        deep = self.up(self.inner(self.down(x)))  # (B, width, H, W)
        if self.skip is not None:
            deep = torch.cat([self.skip(x), deep], dim=1)  # (B, skip + width, H, W)
        return self.merge(deep)


class SkipNet(nn.Module):
    """The DIP "skip" architecture: noise ``[B, in_channels, H, W]`` -> image ``[B, out_channels, H, W]``.

    Args:
        in_channels: channels of the fixed noise input (the paper uses 32).
        out_channels: 3 for an RGB image.
        widths: channels at each level, outermost first; ``len(widths)`` is the depth, and H and W
            must be divisible by ``2 ** depth`` (the paper: 5 levels of 128 channels).
        skip_channels: channels of the skip connection at each level (one int for all levels);
            0 removes it, which makes the net a plain encoder-decoder (an hourglass).
        kernel_size: odd kernel size of the 3x3-style convolutions.
        upsample: ``"bilinear"`` (smooth, the paper's choice) or ``"nearest"`` (blockier).

    The output goes through a sigmoid, so it is an image in [0, 1].
    """

    def __init__(
        self,
        in_channels: int = 32,
        out_channels: int = 3,
        widths: Sequence[int] = (128, 128, 128, 128, 128),
        skip_channels: int | Sequence[int] = 4,
        kernel_size: int = 3,
        upsample: Upsample = "bilinear",
    ):
        super().__init__()
        widths = list(widths)
        skips = [skip_channels] * len(widths) if isinstance(skip_channels, int) else list(skip_channels)
        _check_config(in_channels, out_channels, widths, skips, kernel_size, upsample)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depth = len(widths)
        self.divisor = 2**self.depth  # H and W must be multiples of this
        self.body = _Level(in_channels, widths, skips, kernel_size, upsample)
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, z: Tensor) -> Tensor:
        self.check_input_shape(z)
        return torch.sigmoid(self.head(self.body(z)))  # (B, out_channels, H, W)

    def check_input_shape(self, z: Tensor) -> None:
        """Raise ``ValueError`` naming the size to crop or pad to when ``z`` does not fit the net."""
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"expected noise of shape [B, {self.in_channels}, H, W], got {list(z.shape)}; "
                f"make it with make_noise({self.in_channels}, H, W)"
            )
        H, W = z.shape[-2:]
        d = self.divisor
        if H % d or W % d:
            raise ValueError(
                f"height and width must be divisible by 2**depth = {d} (depth {self.depth}), got {H}x{W}; "
                f"crop the image to {H // d * d}x{W // d * d} or pad it to {-(-H // d) * d}x{-(-W // d) * d}"
            )


def _check_config(in_ch: int, out_ch: int, widths: list[int], skips: list, kernel_size: int,
                  upsample: str) -> None:
    if in_ch < 1 or out_ch < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_ch} and {out_ch}")
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of positive channel counts, got {widths}")
    if len(skips) != len(widths) or any(not isinstance(s, int) or s < 0 for s in skips):
        raise ValueError(f"skip_channels must be one int >= 0 or {len(widths)} of them, got {skips}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (1, 3, 5...), got {kernel_size}")
    if upsample not in _UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {upsample!r}")


def make_noise(
    channels: int,
    height: int,
    width: int,
    *,
    scale: float = _NOISE_SCALE,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The fixed input of a DIP net: uniform noise in ``[0, scale)``, shape ``[1, channels, H, W]``.

    Drawn once and kept fixed during the fit; the net learns to map it to the image.
    Pass a seeded CPU ``generator`` for a reproducible draw.
    """
    if channels < 1 or height < 1 or width < 1:
        raise ValueError(f"channels, height and width must be >= 1, got {channels}, {height}, {width}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    z = torch.rand(1, channels, height, width, generator=generator) * scale
    return z.to(device)


register_model("dip_skipnet", SkipNet, family="dip",
               smoke=Smoke({"in_channels": 8, "widths": (8, 8), "skip_channels": 2}, images(8, 32), [(2, 3, 32, 32)]))
