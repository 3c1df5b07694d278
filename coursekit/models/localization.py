"""The classification + localization network of notebook 02: one CNN, two heads (decks 000, 001).

``image -> conv blocks -> {class logits, box}``, as in deck 001's figure. Its loss, training step and
evaluation are in :mod:`coursekit.localization`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coursekit.models.blocks import conv_bn_act
from coursekit.models.registry import Smoke, images, register_model

__all__ = ["LocalizationNet"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU, then 2x2 max-pool: halves the resolution (one flat Sequential)."""
    return nn.Sequential(*conv_bn_act(c_in, c_out), *conv_bn_act(c_out, c_out), nn.MaxPool2d(2))


class LocalizationNet(nn.Module):
    """Image -> conv layers -> {classification branch, regression branch}, as in deck 001's figure.

    Args:
        num_classes: C, the number of object classes (no background: there is always one object).
        class_specific: if True the regression branch outputs C x 4 numbers, one box per class, and the
            box of the predicted class is used (deck 001's "class-specific boxes"); else 4 numbers.
        width: channels of the first conv block (doubled in each of the 4 blocks).
        image_size: input side S (a multiple of 16).

    ``forward(x: Tensor[B, 3, S, S]) -> (logits Tensor[B, C], boxes Tensor[B, 4] or Tensor[B, C, 4])``,
    boxes as normalised cxcywh in (0, 1) (a sigmoid keeps them inside the image).
    """

    def __init__(self, num_classes: int, class_specific: bool = False, width: int = 32, image_size: int = 64):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 (4 poolings), got {image_size}")
        self.num_classes, self.class_specific = num_classes, class_specific
        widths = [3, width, 2 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(*[_block(a, b) for a, b in zip(widths, widths[1:])])
        flat = widths[-1] * (image_size // 16) ** 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(inplace=True),
                                        nn.Linear(256, num_classes))
        self.regressor = nn.Sequential(nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(inplace=True),
                                       nn.Linear(256, 4 * (num_classes if class_specific else 1)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B = x.shape[0]
        features = self.features(x)  # (B, 8w, S/16, S/16), shared by both branches
        logits = self.classifier(features)  # (B, C)
        boxes = torch.sigmoid(self.regressor(features))  # (B, 4) or (B, 4C)
        if self.class_specific:
            boxes = boxes.view(B, self.num_classes, 4)  # (B, C, 4)
        return logits, boxes

    @staticmethod
    def pick_boxes(boxes: Tensor, labels: Tensor) -> Tensor:
        """The box of class ``labels`` (Tensor[B]) from class-specific ``boxes`` Tensor[B, C, 4] -> Tensor[B, 4].
        Class-agnostic boxes (Tensor[B, 4]) are returned unchanged."""
        if boxes.dim() == 2:
            return boxes
        return boxes[torch.arange(len(labels), device=boxes.device), labels]


register_model("localization", LocalizationNet, family="localization",
               smoke=Smoke({"num_classes": 6, "width": 8, "image_size": 32}, images(3, 32), [(2, 6), (2, 4)]))
