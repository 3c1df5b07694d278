"""YOLO v1 in miniature: one network pass, an S x S grid, B boxes per cell (decks 001, 003, 004).

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

This file holds the network; targets, loss, training step and decoding are task code in
:mod:`coursekit.detection`. The body, :class:`~coursekit.models.blocks.TinyDarknet`, is shared with SSD.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coursekit.models.blocks import TinyDarknet, check_square_images, conv_bn_act
from coursekit.models.registry import Smoke, images, register_model

__all__ = ["YOLO"]


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

        was_training = self.training
        self.eval()
        try:
            raw = self(images)
        finally:
            self.train(was_training)
        return yolo_decode(raw, self.num_boxes, self.image_size, score_threshold, iou_threshold, max_detections)


register_model("yolo_v1", YOLO, family="yolo",
               smoke=Smoke({"num_classes": 3, "image_size": 32, "grid_size": 4, "widths": (4, 8, 8, 8, 8)},
                           images(3, 32), [(2, 4, 4, 2 * 5 + 3)]))
