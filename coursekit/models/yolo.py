"""YOLO v1 in miniature: one network pass, an S x S grid, B boxes per cell (decks 001, 003, 004);
and YOLOv2's fix for what v1 misses (:class:`YOLOv2`: anchor priors, classes per box, a finer grid).

Redmon et al., "You only look once: unified, real-time object detection" (CVPR 2016); taught in
notebook ``05_yolo_ssd``. The figure the code follows::

    image [N, 3, H, W] ─► TinyDarknet (stride H / S) ─► head ─► raw [N, S, S, B * 5 + C]
    per cell:  B x (x, y, sqrt w, sqrt h, confidence)  +  C class probabilities P(class | object)

- The cell that holds an object's centre is responsible for it
  (:func:`coursekit.detection.yolo_encode_targets`); ``(x, y)`` is the centre's offset inside that
  cell, ``(sqrt w, sqrt h)`` the size as a fraction of the image
  (the square root makes an error on a small box cost more than the same error on a big one).
- Confidence is trained towards ``P(object) * IoU(predicted box, ground truth)``: a box that sits
  badly on its object should say so.
- :func:`coursekit.detection.yolo_loss` is the paper's sum of squared errors with ``lambda_coord = 5`` and
  ``lambda_noobj = 0.5`` (most cells hold no object; without the 0.5 their "no" would drown the rest).
- :func:`coursekit.detection.yolo_decode` turns the grid into boxes: class score = confidence x
  P(class | object), then NMS.

YOLOv2 (Redmon and Farhadi, "YOLO9000: better, faster, stronger", CVPR 2017), the three changes that
matter on small, crowded objects::

    image ─► TinyDarknet ─► stride-8 map ⊕ upsampled stride-16 map ─► head ─► raw [N, S, S, K, 5 + C]
    per cell and anchor k:  (t_x, t_y, t_w, t_h, t_o)  +  C class logits (one distribution per box)

- **Anchor priors** (``K`` box shapes ``(p_w, p_h)`` found by :func:`coursekit.anchors.kmeans_anchors`):
  a box is ``(c_x + sigmoid(t_x)) * stride``, ``(c_y + sigmoid(t_y)) * stride``, ``p_w * exp(t_w)``,
  ``p_h * exp(t_h)``; the ground truth goes to its centre's cell and the anchor of closest shape.
- **Classes per box**: each anchor has its own class distribution, so two digits in one cell no longer
  share one.
- **A finer grid**: stride 8 (12 x 12 cells on 96 px) instead of 16; the stride-16 map joins it (v2's
  "passthrough" joined a fine and a coarse map too, folding the fine one down; here the coarse map is
  upsampled, as YOLOv3 does) so that the cells still see whole large digits.

This file holds the networks; targets, losses, training steps and decoding are task code in
:mod:`coursekit.detection`. The body, :class:`~coursekit.models.blocks.TinyDarknet`, is shared with SSD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.models.blocks import TinyDarknet, check_square_images, conv_bn_act
from coursekit.models.registry import Smoke, images, register_model

__all__ = ["YOLO", "YOLOv2"]

_INITIAL_CONFIDENCE = 0.01  # YOLOv2's boxes start out saying "no object" (RetinaNet's prior pi, as later YOLOs do)


class YOLO(nn.Module):
    """YOLO v1 on a small backbone. ``forward(x [N, 3, H, W])`` -> raw ``[N, S, S, B * 5 + C]`` logits.

    Args:
        num_classes: ``C``, object classes (labels ``1..C`` in targets, 0 is the background).
        image_size: square input side ``H = W``; ``image_size / grid_size`` must be a power of 2
            (the backbone's stride), e.g. 96 px and S = 6 (stride 16).
        grid_size: ``S``.
        num_boxes: ``B``, boxes per cell (2 in the paper).
        widths: channels of the backbone stages (only the stages down to stride ``image_size / S``
            are built); the head adds two convs of the last width (context beyond one cell, the job of
            the paper's fully connected layers).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        grid_size: int = 6,
        num_boxes: int = 2,
        widths: tuple[int, ...] = (16, 32, 64, 128, 128),
    ):
        super().__init__()
        if num_classes < 1 or num_boxes < 1 or grid_size < 1:
            raise ValueError(
                f"need num_classes, num_boxes, grid_size >= 1, got {num_classes}, {num_boxes}, {grid_size}"
            )
        stride = image_size // grid_size
        n_stages = stride.bit_length() - 1
        if stride * grid_size != image_size or 2**n_stages != stride or not 1 <= n_stages <= len(widths):
            raise ValueError(
                f"image_size / grid_size = {image_size} / {grid_size} must be a power of 2 between 2 and "
                f"{2 ** len(widths)} (the backbone's strides), e.g. image_size=96, grid_size=6"
            )
        self.num_classes, self.image_size = num_classes, image_size
        self.grid_size, self.num_boxes = grid_size, num_boxes
        self.backbone = TinyDarknet(widths[:n_stages])
        c = widths[n_stages - 1]
        self.head = nn.Sequential(conv_bn_act(c, c, act=nn.LeakyReLU(0.1)), conv_bn_act(c, c, act=nn.LeakyReLU(0.1)),
                                  nn.Conv2d(c, num_boxes * 5 + num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        check_square_images(x, self.image_size)
        features = self.backbone(x)[-1]  # (N, c, S, S)
        return self.head(features).permute(0, 2, 3, 1)  # (N, S, S, B * 5 + C)

    @torch.no_grad()
    def detect(
        self, images: Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100
    ) -> list[dict[str, Tensor]]:
        """Boxes of a batch ``[N, 3, H, W]``: :func:`coursekit.detection.yolo_decode` of ``forward``, in eval mode."""
        from coursekit.detection import yolo_decode
        from coursekit.train import eval_mode

        with eval_mode(self):
            raw = self(images)
        return yolo_decode(raw, self.num_boxes, self.image_size, score_threshold, iou_threshold, max_detections)


class YOLOv2(nn.Module):
    """YOLOv2's detector head on the small backbone. ``forward(x [N, 3, H, W])`` -> raw ``[N, S, S, K, 5 + C]``.

    Args:
        num_classes: ``C``, object classes (labels ``1..C`` in targets, 0 is the background).
        anchors: ``K`` anchor shapes ``(width, height)`` in pixels, e.g. ``kmeans_anchors(train_wh, 5)``;
            kept in the buffer ``anchors`` (Tensor[K, 2]), saved with the weights.
        image_size: square input side ``H = W``.
        stride: the grid's cell in pixels (``S = image_size / stride``), a backbone stride (8 on 96 px: 12 x 12).
        widths: backbone stage channels down to its deepest stride, e.g. ``(16, 32, 64, 128)`` ends at 16;
            when it is deeper than ``stride``, the deepest map is upsampled and joined to the grid's map.
        head_channels: channels of the head's two 3x3 convs (context beyond one cell).

    The confidences start at 0.01 (the last conv's bias), not 0.5: of the ``S x S x K`` boxes only a few hold
    an object, and at 0.5 the "no object" term would swamp the first steps (RetinaNet's prior, in later YOLOs).

    Per cell and anchor the last dimension holds ``t_x, t_y, t_w, t_h, t_o`` and ``C`` class logits;
    :func:`coursekit.detection.yolov2_split_output` activates them.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Tensor | Sequence[Sequence[float]],
        image_size: int = 96,
        stride: int = 8,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        head_channels: int = 128,
    ):
        super().__init__()
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        if num_classes < 1 or anchors.dim() != 2 or anchors.shape[1] != 2 or len(anchors) < 1 or (anchors <= 0).any():
            raise ValueError(
                f"need num_classes >= 1 and anchors as K >= 1 positive (width, height) pairs; got {num_classes} "
                f"and anchors of shape {list(anchors.shape)}"
            )
        self.backbone = TinyDarknet(widths)
        if stride not in self.backbone.strides or image_size % stride:
            raise ValueError(
                f"stride must be one of the backbone's strides {self.backbone.strides} and divide "
                f"image_size={image_size}, got {stride}"
            )
        self.num_classes, self.image_size, self.stride = num_classes, image_size, stride
        self.grid_size, self.num_anchors = image_size // stride, len(anchors)
        self.register_buffer("anchors", anchors)
        self.level = self.backbone.strides.index(stride)
        deeper = self.level < len(widths) - 1  # a coarser map exists: pass it through to the grid
        c_in = widths[self.level] + (widths[-1] if deeper else 0)
        self.passthrough = deeper
        act = nn.LeakyReLU(0.1)
        self.head = nn.Sequential(conv_bn_act(c_in, head_channels, act=act),
                                  conv_bn_act(head_channels, head_channels, act=act),
                                  nn.Conv2d(head_channels, self.num_anchors * (5 + num_classes), 1))
        # 12 x 12 x 5 boxes at confidence 0.5 would make "no object" most of the first steps' loss
        with torch.no_grad():
            self.head[-1].bias.view(self.num_anchors, 5 + num_classes)[:, 4] = math.log(
                _INITIAL_CONFIDENCE / (1 - _INITIAL_CONFIDENCE))

    def forward(self, x: Tensor) -> Tensor:
        check_square_images(x, self.image_size)
        stages = self.backbone(x)
        features = stages[self.level]  # (N, c, S, S): the grid
        if self.passthrough:  # the deepest map, upsampled to the grid and joined to it
            deep = F.interpolate(stages[-1], size=features.shape[-2:], mode="nearest")
            features = torch.cat([features, deep], dim=1)
        out = self.head(features)  # (N, K * (5 + C), S, S)
        N, _, S, _ = out.shape
        return out.permute(0, 2, 3, 1).reshape(N, S, S, self.num_anchors, 5 + self.num_classes)  # (N, S, S, K, 5 + C)

    @torch.no_grad()
    def detect(
        self, images: Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100
    ) -> list[dict[str, Tensor]]:
        """Boxes of a batch ``[N, 3, H, W]``: :func:`coursekit.detection.yolov2_decode` of ``forward``, in eval mode."""
        from coursekit.detection import yolov2_decode
        from coursekit.train import eval_mode

        with eval_mode(self):
            raw = self(images)
        return yolov2_decode(raw, self.anchors, self.image_size, score_threshold, iou_threshold, max_detections)


register_model("yolo_v1", YOLO, family="yolo",
               smoke=Smoke({"num_classes": 3, "image_size": 32, "grid_size": 4, "widths": (4, 8, 8, 8, 8)},
                           images(3, 32), [(2, 4, 4, 2 * 5 + 3)]))
register_model("yolo_v2", YOLOv2, family="yolo",
               smoke=Smoke({"num_classes": 3, "anchors": ((6.0, 8.0), (16.0, 12.0)), "image_size": 32, "stride": 8,
                            "widths": (4, 8, 8, 8), "head_channels": 8},
                           images(3, 32), [(2, 4, 4, 2, 5 + 3)]))
