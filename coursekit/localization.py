"""Classification + localization as regression: one CNN, two heads, one multitask loss.

Taught in notebook 02 (decks 000, 001, 004). The network sees an image holding one object and outputs
its class (softmax, cross-entropy, one-hot targets) and its box (x, y, w, h: four real numbers, so a
regression loss: L2, L1 or smooth L1). The total loss weights the two terms:

    loss = cross_entropy(class) + box_weight * box_loss(box)

``box_weight`` is a hyper-parameter that decides how much each task moves the shared layers.

Boxes here are ``cxcywh`` normalised by the image size (all four numbers in [0, 1]), so the box loss
does not depend on the resolution; :func:`to_pixels_xyxy` converts back for IoU and drawing.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from coursekit.boxes import box_convert, box_iou
from coursekit.train import frozen_to_eval

__all__ = [
    "BoxLoss",
    "BOX_LOSSES",
    "LocalizationNet",
    "localization_loss",
    "make_step",
    "single_object_tensors",
    "to_pixels_xyxy",
    "evaluate",
]

BoxLoss = Literal["l2", "l1", "smooth_l1"]
BOX_LOSSES: tuple[str, ...] = ("l2", "l1", "smooth_l1")


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU, then 2x2 max-pool: halves the resolution."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


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
        self.features = nn.Sequential(*[_conv_block(a, b) for a, b in zip(widths, widths[1:])])
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


def localization_loss(
    logits: Tensor,
    boxes: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    box_weight: float = 1.0,
    box_loss: BoxLoss = "smooth_l1",
) -> dict[str, Tensor]:
    """The multitask loss. ``logits`` Tensor[B, C], ``boxes`` Tensor[B, 4] or Tensor[B, C, 4] (the
    ground-truth class's box is trained), ``labels`` Tensor[B] int64, ``gt_boxes`` Tensor[B, 4].

    Returns ``{"loss": ce + box_weight * box, "loss_cls": ce, "loss_box": box}`` (box loss summed over the
    4 coordinates, averaged over the batch).
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
    if box_weight < 0:
        raise ValueError(f"box_weight must be >= 0, got {box_weight}")
    pred = LocalizationNet.pick_boxes(boxes, labels)
    if pred.shape != gt_boxes.shape:
        raise ValueError(f"predicted boxes {list(pred.shape)} and gt_boxes {list(gt_boxes.shape)} differ")
    loss_fn = {"l2": F.mse_loss, "l1": F.l1_loss, "smooth_l1": lambda a, b, **kw: F.smooth_l1_loss(
        a, b, beta=0.05, **kw)}[box_loss]  # beta in normalised units: quadratic below 5% of the image
    loss_box = loss_fn(pred, gt_boxes, reduction="none").sum(dim=1).mean()
    loss_cls = F.cross_entropy(logits, labels)
    return {"loss": loss_cls + box_weight * loss_box, "loss_cls": loss_cls, "loss_box": loss_box}


def make_step(box_weight: float = 1.0, box_loss: BoxLoss = "smooth_l1"):
    """A training step for :class:`coursekit.train.Trainer` on batches ``(images, labels, gt_boxes)``."""

    def step(model: nn.Module, batch, device) -> dict[str, Tensor]:
        frozen_to_eval(model)  # deck 001's phase 2: frozen conv layers keep their BatchNorm statistics too
        images, labels, gt_boxes = (t.to(device) for t in batch)
        logits, boxes = model(images)
        out = localization_loss(logits, boxes, labels, gt_boxes, box_weight, box_loss)
        out["acc"] = (logits.argmax(1) == labels).float().mean()
        return out

    return step


def single_object_tensors(dataset: Dataset, n: int | None = None) -> TensorDataset:
    """(images Tensor[N, 3, S, S], labels Tensor[N] in 0..C-1, boxes Tensor[N, 4] normalised cxcywh)
    from a coursekit detection dataset whose scenes hold one object (e.g. ``Shapes(max_objects=1)``).

    Labels are shifted down by one: there is no background class when there is always an object.
    """
    n = len(dataset) if n is None else n
    images, labels, boxes = [], [], []
    for i in range(n):
        image, target = dataset[i]
        if len(target["labels"]) != 1:
            raise ValueError(f"item {i} holds {len(target['labels'])} objects; build the dataset with "
                             "min_objects=max_objects=1")
        H, W = image.shape[-2:]
        scale = torch.tensor([W, H, W, H], dtype=torch.float32)
        images.append(image)
        labels.append(int(target["labels"][0]) - 1)
        boxes.append(box_convert(target["boxes"][0:1].float(), "xyxy", "cxcywh")[0] / scale)
    return TensorDataset(torch.stack(images), torch.tensor(labels), torch.stack(boxes))


def to_pixels_xyxy(boxes: Tensor, image_size: int) -> Tensor:
    """Normalised cxcywh Tensor[N, 4] -> pixel xyxy Tensor[N, 4] for a square image of side ``image_size``."""
    return box_convert(boxes * image_size, "cxcywh", "xyxy")


@torch.no_grad()
def evaluate(model: LocalizationNet, data: TensorDataset, device: torch.device | str = "cpu",
             batch_size: int = 256) -> dict[str, float]:
    """Accuracy of the class, mean IoU of the box (the predicted class's box), and the share of boxes with
    IoU >= 0.5 (a "correct localization" in PASCAL terms) and of both right (class and IoU >= 0.5)."""
    model.eval()
    images, labels, gt = data.tensors
    size = images.shape[-1]
    correct, ious = [], []
    for i in range(0, len(labels), batch_size):
        logits, boxes = model(images[i : i + batch_size].to(device))
        predicted = logits.argmax(1).cpu()
        pred_boxes = LocalizationNet.pick_boxes(boxes.cpu(), predicted)
        gt_boxes = to_pixels_xyxy(gt[i : i + batch_size], size)
        iou = box_iou(to_pixels_xyxy(pred_boxes, size), gt_boxes).diagonal()  # each box with its own truth
        correct.append(predicted == labels[i : i + batch_size])
        ious.append(iou)
    correct_t, iou_t = torch.cat(correct), torch.cat(ious)
    return {
        "acc": correct_t.float().mean().item(),
        "mean_iou": iou_t.mean().item(),
        "iou@0.5": (iou_t >= 0.5).float().mean().item(),
        "both": (correct_t & (iou_t >= 0.5)).float().mean().item(),
    }
