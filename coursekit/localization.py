"""Classification + localization as regression: one CNN, two heads, one multitask loss.

Taught in notebook 02 (decks 000, 001, 004). The network sees an image holding one object and outputs
its class (softmax, cross-entropy, one-hot targets) and its box (x, y, w, h: four real numbers, so a
regression loss: L2, L1 or smooth L1). The total loss weights the two terms:

    loss = cross_entropy(class) + box_weight * box_loss(box)

``box_weight`` is a hyper-parameter that decides how much each task moves the shared layers.

The network is :class:`coursekit.models.localization.LocalizationNet`; this module holds the task code
around it (loss, training step, data, evaluation).

Boxes here are ``cxcywh`` normalised by the image size (all four numbers in [0, 1]), so the box loss
does not depend on the resolution; :func:`to_pixels_xyxy` converts back for IoU and drawing.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from coursekit.boxes import box_convert, paired_box_iou
from coursekit.models.localization import LocalizationNet
from coursekit.train import frozen_to_eval

__all__ = [
    "BoxLoss",
    "BOX_LOSSES",
    "localization_loss",
    "make_step",
    "single_object_tensors",
    "to_pixels_xyxy",
    "evaluate",
]

BoxLoss = Literal["l2", "l1", "smooth_l1"]
BOX_LOSSES: tuple[str, ...] = get_args(BoxLoss)


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
        iou = paired_box_iou(to_pixels_xyxy(pred_boxes, size), gt_boxes)  # each box with its own truth
        correct.append(predicted == labels[i : i + batch_size])
        ious.append(iou)
    correct_t, iou_t = torch.cat(correct), torch.cat(ious)
    return {
        "acc": correct_t.float().mean().item(),
        "mean_iou": iou_t.mean().item(),
        "iou@0.5": (iou_t >= 0.5).float().mean().item(),
        "both": (correct_t & (iou_t >= 0.5)).float().mean().item(),
    }
