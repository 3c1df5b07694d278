"""SSD in miniature: default boxes on several feature maps, classified straight into classes + "none".

Liu et al., "SSD: single shot multibox detector" (ECCV 2016, 59 FPS); Lin et al., "Feature pyramid
networks for object detection" (CVPR 2017); decks 003 and 004, taught in notebook ``05_yolo_ssd``.
The figure the code follows::

    image ─► TinyDarknet ─► feature maps at strides (8, 16, 32) ─(optional FPN top-down path)─►
        per level: 3x3 conv ─► class logits [N, A_l, C + 1]     3x3 conv ─► box deltas [N, A_l, 4]
    concatenated over levels: cls_logits [N, A, C + 1], deltas [N, A, 4]; anchors [A, 4] xyxy pixels

- Anchors (default boxes) come from :func:`coursekit.anchors.ssd_default_boxes`; level ``l`` gets boxes
  of ``1.5 x stride`` pixels by default, so the high-resolution level holds the small anchors.
- Training (:func:`coursekit.detection.ssd_loss`): :func:`coursekit.anchors.match_anchors` (IoU >= 0.5,
  plus every object's best anchor), smooth L1 on the R-CNN deltas of the positives, cross-entropy on
  positives and the ``3 x P`` hardest negatives (:func:`coursekit.anchors.hard_negative_mining`), both
  divided by ``P``.
- Inference (:func:`coursekit.detection.ssd_decode`): softmax, per-class score threshold and top-k,
  deltas -> boxes, clip, per-class NMS: the same steps and numbers as torchvision's
  ``SSD.postprocess_detections``.

This file holds the network; the loss, the training step and the decoding are task code and live in
:mod:`coursekit.detection` (they equal torchvision's: ``tests/test_ssd.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.anchors import ssd_default_boxes
from coursekit.models.blocks import TinyDarknet, check_square_images, conv_bn_act
from coursekit.models.registry import Smoke, images, register_model

__all__ = ["SSD", "SSDConfig", "FPN"]

_ANCHOR_SCALE = 1.5  # default anchor side: 1.5 x the level's stride


class FPN(nn.Module):
    """Feature Pyramid Network top-down path: ``list[Tensor[N, c_l, h_l, w_l]]`` (fine to coarse) ->
    ``list[Tensor[N, channels, h_l, w_l]]``.

    Each level: a 1x1 "lateral" conv to ``channels``, plus the (nearest-)upsampled result of the coarser
    level, then a 3x3 conv. The high-resolution maps thus receive the semantics of the deep ones.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn_act(channels, channels, act=nn.LeakyReLU(0.1)) for _ in in_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        top = self.lateral[-1](features[-1])
        outs = [self.smooth[-1](top)]
        for i in range(len(features) - 2, -1, -1):  # coarse -> fine
            top = self.lateral[i](features[i]) + F.interpolate(top, size=features[i].shape[-2:], mode="nearest")
            outs.insert(0, self.smooth[i](top))
        return outs


@dataclass(frozen=True)
class SSDConfig:
    """Every option of :class:`SSD` but the class count, in one object: ``SSD.from_config(10, SSDConfig(fpn=True))``."""

    image_size: int = 96  # square input side; the strides must divide it
    strides: tuple[int, ...] = (8, 16, 32)  # backbone levels that predict; leave out 8 to lose the small anchors
    widths: tuple[int, ...] = (16, 32, 64, 128, 128)  # TinyDarknet stage channels (strides 2, 4, ..., 32)
    aspect_ratios: tuple[tuple[float, ...], ...] | None = None  # per level; None: (2,) on every level
    scales: tuple[float, ...] | None = None  # SSD's s_k, one per level + 1; None: 1.5 x stride / image_size
    fpn: bool = False  # add the FPN top-down path before the heads
    fpn_channels: int = 64  # channels of the FPN levels


class SSD(nn.Module):
    """A small SSD. ``forward(x [N, 3, H, W])`` -> ``(cls_logits [N, A, C + 1], deltas [N, A, 4])``.

    Args:
        num_classes: ``C`` object classes; logit 0 is the background ("none").
        image_size: square input side.
        strides: the backbone levels that predict (powers of 2 up to ``2 ** len(widths)``), e.g.
            ``(8, 16, 32)``; leave out 8 to see what the high-resolution level buys on small objects.
        widths: backbone stage channels (:class:`~coursekit.models.blocks.TinyDarknet`).
        aspect_ratios: SSD ratios per level (default ``(2,)``: boxes 1:1, 1:1 larger, 2:1, 1:2).
        scales: anchor scales as fractions of the image, one per level plus one (SSD's ``s_k``); default
            ``1.5 x stride / image_size`` per level, then 1.0.
        fpn: add the FPN top-down path (:class:`FPN`) before the heads.
        fpn_channels: channels of the FPN levels.

    The attribute ``anchors`` (``Tensor[A, 4]`` xyxy pixels, a buffer that follows the device) is in the
    order of the flattened outputs: level, row, column, box of the cell.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        strides: Sequence[int] = (8, 16, 32),
        widths: tuple[int, ...] = (16, 32, 64, 128, 128),
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        scales: Sequence[float] | None = None,
        fpn: bool = False,
        fpn_channels: int = 64,
    ):
        super().__init__()
        self.backbone = TinyDarknet(widths)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        bad = [s for s in strides if s not in self.backbone.strides or image_size % s]
        if not strides or bad or list(strides) != sorted(set(strides)):
            raise ValueError(
                f"strides must be increasing, among the backbone's {self.backbone.strides} and divide "
                f"image_size={image_size}; got {tuple(strides)}"
            )
        self.num_classes, self.image_size, self.strides = num_classes, image_size, tuple(strides)
        self.levels = [self.backbone.strides.index(s) for s in strides]
        self.aspect_ratios = [tuple(r) for r in (aspect_ratios or [(2.0,)] * len(strides))]
        if scales is None:
            scales = [_ANCHOR_SCALE * s / image_size for s in strides] + [1.0]
        if len(self.aspect_ratios) != len(strides) or len(scales) != len(strides) + 1:
            raise ValueError(f"give one aspect_ratios entry per level and len(strides) + 1 = {len(strides) + 1} scales")
        in_channels = [widths[i] for i in self.levels]
        self.fpn = FPN(in_channels, fpn_channels) if fpn else None
        head_in = [fpn_channels] * len(strides) if fpn else in_channels
        per_cell = [2 + 2 * len(r) for r in self.aspect_ratios]  # SSD: two squares + a pair per ratio
        pairs = list(zip(head_in, per_cell, strict=True))
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, a * (num_classes + 1), 3, padding=1) for c, a in pairs)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in pairs)
        sizes = [(image_size // s, image_size // s) for s in strides]
        anchors = ssd_default_boxes(sizes, (image_size, image_size), self.aspect_ratios, scales=list(scales))
        self.register_buffer("anchors", anchors, persistent=False)

    @classmethod
    def from_config(cls, num_classes: int, config: SSDConfig | None = None) -> SSD:
        """``SSD(num_classes, **asdict(config))``: build from an :class:`SSDConfig` (defaults when None)."""
        return cls(num_classes, **asdict(config or SSDConfig()))

    def features(self, x: Tensor) -> list[Tensor]:
        """The maps the heads read: the chosen backbone levels, through the FPN when there is one."""
        stages = self.backbone(x)
        maps = [stages[i] for i in self.levels]
        return self.fpn(maps) if self.fpn is not None else maps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_square_images(x, self.image_size)
        N = x.shape[0]
        cls, box = [], []
        for f, cls_head, box_head in zip(self.features(x), self.cls_heads, self.box_heads):
            # [N, A_cell * K, h, w] -> [N, h, w, A_cell * K] -> [N, h * w * A_cell, K]: the anchors' order
            cls.append(cls_head(f).permute(0, 2, 3, 1).reshape(N, -1, self.num_classes + 1))
            box.append(box_head(f).permute(0, 2, 3, 1).reshape(N, -1, 4))
        return torch.cat(cls, dim=1), torch.cat(box, dim=1)  # (N, A, C + 1), (N, A, 4)

    @torch.no_grad()
    def detect(
        self,
        images: Tensor,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.45,
        topk_candidates: int = 100,
        max_detections: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Boxes of a batch ``[N, 3, H, W]``: :func:`coursekit.detection.ssd_decode` of ``forward``, in eval mode.

        Tighter defaults than torchvision's SSD300 (0.01, 400 per class): coursekit's NMS builds the full
        ``K x K`` IoU matrix, and an untrained net can pass thousands of low scores to it."""
        from coursekit.detection import ssd_decode
        from coursekit.train import eval_mode

        with eval_mode(self):
            cls_logits, deltas = self(images)

        return ssd_decode(
            cls_logits, deltas, self.anchors, self.image_size,
            score_threshold=score_threshold, iou_threshold=iou_threshold, topk_candidates=topk_candidates,
            max_detections=max_detections,
        )


register_model("ssd", SSD, family="ssd",
               smoke=Smoke({"num_classes": 3, "image_size": 32, "widths": (4, 8, 8, 8, 8)}, images(3, 32),
                           [(2, 84, 4), (2, 84, 4)]))  # 84 anchors: (4x4 + 2x2 + 1x1) cells x 4 boxes
register_model("ssd_fpn", lambda num_classes, **kw: SSD(num_classes, fpn=True, **kw), family="ssd",
               smoke=Smoke({"num_classes": 3, "image_size": 32, "widths": (4, 8, 8, 8, 8), "fpn_channels": 8},
                           images(3, 32), [(2, 84, 4), (2, 84, 4)]))
