"""Stacked hourglass networks for human pose, from scratch.

Newell, Yang and Deng, "Stacked Hourglass Networks for Human Pose Estimation" (ECCV 2016); deck 001,
taught in notebook ``08_stacked_hourglass_pose``. The figures the code follows::

    Hourglass(depth):   x ─► Residual ───────────────────────────────────────────┐ skip (same size)
                        x ─► maxpool 2 ─► Residual ─► Hourglass(depth - 1) ─► Residual
                                          ─► nearest-neighbour up x2 ─────────────+─► out
                        (at depth 1 the inner Hourglass is a plain Residual)

    StackedHourglass:   image [B, 3, H, W] ─► stem (7x7 conv stride 2, Residual, maxpool, Residuals)
                        ─► x [B, C, H/4, W/4]
                        for each stack s:  hourglass ─► Residual ─► 1x1 conv-BN-ReLU ─► feats
                                           feats ─► 1x1 conv ─► heatmaps_s [B, K, H/4, W/4]  (a loss here)
                                           if not the last stack:
                                               x = x + 1x1(feats) + 1x1(heatmaps_s)  # supervised

The paper: 256x256 input, 64x64 heatmaps, C = 256, depth 4, 8 stacks, rmsprop lr 2.5e-4, 75 ms a
forward pass, about 3 days of training on a 12 GB TitanX. The course trains far smaller ones.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.models.blocks import conv_bn_act
from coursekit.models.registry import Smoke, images, register_model

__all__ = ["Residual", "Hourglass", "StackedHourglass", "stacked_hourglass"]

# The paper's stem: 7x7 conv stride 2, then a 2x2 max pool: heatmaps are 1/4 of the input. Stride 2
# (no pool) gives finer heatmaps for small inputs (notebook 08 explains when that matters).
_STEM_STRIDES = (2, 4)


class Residual(nn.Module):
    """The paper's residual module (pre-activation bottleneck): ``[B, c_in, H, W] -> [B, c_out, H, W]``.

    BN-ReLU-conv1x1 (c_out/2) -> BN-ReLU-conv3x3 (c_out/2) -> BN-ReLU-conv1x1 (c_out), plus the input
    (through a 1x1 conv when the channel count changes).
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = max(c_out // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, c_out, 1),
        )  # fmt: skip
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class Hourglass(nn.Module):
    """One hourglass of ``depth`` levels: ``[B, C, H, W] -> [B, C, H, W]``, H and W divisible by 2**depth.

    Pool down, recurse, upsample by nearest neighbour and add the skip branch kept at this resolution:
    the module is symmetric, one level of the figure per recursion.
    """

    def __init__(self, depth: int, channels: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"an hourglass needs depth >= 1, got {depth}")
        self.depth = depth
        self.skip = Residual(channels, channels)
        self.down = Residual(channels, channels)
        self.inner = Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        self.up = Residual(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(x)  # (B, C, H, W): detail at this resolution
        y = self.down(F.max_pool2d(x, 2))  # (B, C, H/2, W/2)
        y = self.up(self.inner(y))  # (B, C, H/2, W/2): context from all coarser levels
        return skip + F.interpolate(y, scale_factor=2, mode="nearest")  # (B, C, H, W)


class StackedHourglass(nn.Module):
    """``num_stacks`` hourglasses in a row, each predicting ``num_joints`` heatmaps.

    ``forward(images: Tensor[B, in_channels, H, W]) -> list[Tensor[B, K, H/S, W/S]]`` (S = ``stem_stride``),
    one heatmap tensor per stack (the last one is the prediction; every one gets a loss: intermediate
    supervision). H and W must be divisible by ``S * 2**depth``.

    Args:
        num_stacks: hourglasses in a row (paper: 8).
        num_joints: heatmaps per stack, K.
        channels: feature channels C throughout (paper: 256).
        depth: pooling levels of each hourglass (paper: 4, from 64x64 down to 4x4).
        in_channels: image channels.
        stem_stride: 4 as in the paper (256 -> 64x64 heatmaps), or 2 (no max pool in the stem):
            finer heatmaps when the input is small.
    """

    def __init__(self, num_stacks: int = 2, num_joints: int = 16, channels: int = 256, depth: int = 4,
                 in_channels: int = 3, stem_stride: int = 4):
        super().__init__()
        for name, value in (("num_stacks", num_stacks), ("num_joints", num_joints), ("channels", channels),
                            ("depth", depth), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_stacks, self.num_joints, self.depth = num_stacks, num_joints, depth
        C, K = channels, num_joints
        if stem_stride not in _STEM_STRIDES:
            raise ValueError(f"stem_stride must be one of {_STEM_STRIDES}, got {stem_stride!r}")
        self.stem_stride = stem_stride
        c4, c2 = max(C // 4, 1), max(C // 2, 1)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c4, 7, stride=2, padding=3), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
            Residual(c4, c2), nn.MaxPool2d(2) if stem_stride == 4 else nn.Identity(),
            Residual(c2, c2), Residual(c2, C),
        )  # (B, C, H/stem_stride, W/stem_stride)
        self.hourglasses = nn.ModuleList(Hourglass(depth, C) for _ in range(num_stacks))
        self.features = nn.ModuleList(
            nn.Sequential(Residual(C, C), conv_bn_act(C, C, 1, bias=True)) for _ in range(num_stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(C, K, 1) for _ in range(num_stacks))
        for head in self.heads:
            # Start from all-zero heatmaps: the target is almost all zeros, so training skips the
            # phase of merely learning to output zero and starts on the peaks (faster on a CPU budget).
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # The remaps back into feature space: only between stacks, none after the last one.
        self.remap_features = nn.ModuleList(nn.Conv2d(C, C, 1) for _ in range(num_stacks - 1))
        self.remap_heatmaps = nn.ModuleList(nn.Conv2d(K, C, 1) for _ in range(num_stacks - 1))

    def _check_input(self, images: Tensor) -> None:
        multiple = self.stem_stride * 2**self.depth
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got {list(images.shape)}")
        H, W = images.shape[-2:]
        if H % multiple or W % multiple:
            fix = (-(-H // multiple) * multiple, -(-W // multiple) * multiple)
            raise ValueError(
                f"image size {H}x{W} must be divisible by {multiple} (stem stride x 2**depth): "
                f"resize or pad to {fix[0]}x{fix[1]}"
            )

    def forward(self, images: Tensor) -> list[Tensor]:
        self._check_input(images)
        x = self.stem(images)  # (B, C, H/4, W/4)
        outputs = []
        for s in range(self.num_stacks):
            feats = self.features[s](self.hourglasses[s](x))  # (B, C, h, w)
            heatmaps = self.heads[s](feats)  # (B, K, h, w)
            outputs.append(heatmaps)
            if s < self.num_stacks - 1:
                # Intermediate supervision: the next hourglass sees this guess, remapped to C channels.
                x = x + self.remap_features[s](feats) + self.remap_heatmaps[s](heatmaps)
        return outputs


def stacked_hourglass(num_stacks: int = 2, num_joints: int = 15, size: str = "tiny") -> StackedHourglass:
    """A :class:`StackedHourglass` of a named size: ``"tiny"`` (C = 32, depth 2: 64x64 inputs on a CPU,
    notebook 08), ``"small"`` (C = 128, depth 3) or ``"paper"`` (C = 256, depth 4: 256x256 inputs)."""
    sizes = {"tiny": (32, 2), "small": (128, 3), "paper": (256, 4)}
    if size not in sizes:
        raise ValueError(f"unknown hourglass size {size!r}; choose one of {sorted(sizes)}")
    channels, depth = sizes[size]
    return StackedHourglass(num_stacks, num_joints, channels, depth)


register_model("stacked_hourglass", StackedHourglass, family="hourglass",
               smoke=Smoke({"num_stacks": 2, "num_joints": 5, "channels": 8, "depth": 2}, images(3, 32),
                           [(2, 5, 8, 8), (2, 5, 8, 8)]))
