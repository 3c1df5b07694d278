"""Semantic segmentation around the models: joint augmentation, training step, evaluation, TTA.

Taught in notebook ``06_semantic_segmentation`` (deck 002: "loss and problems", augmentation and
test-time augmentation). The models are in :mod:`coursekit.models.segmentation`, the losses in
:mod:`coursekit.losses`, IoU / mIoU in :mod:`coursekit.metrics.segmentation`, the in-memory dataset
:class:`coursekit.data.SegmentationSet` in :mod:`coursekit.data.segmentation`.

Conventions: images float ``Tensor[3, H, W]`` (batches ``[N, 3, H, W]``) in [0, 1]; masks int64
``Tensor[H, W]`` (``[N, H, W]``) of class indices, 0 = background; models return logits ``[N, C, H, W]``.

- :class:`JointAugment`: flips, random resized crop (image bilinear, mask nearest), colour jitter (image only).
- :func:`make_step` / :func:`train_segmenter`: per-pixel losses for :class:`coursekit.train.Trainer`.
- :func:`predict` (with flip TTA), :func:`boundary_f_score`, :func:`evaluate`, :func:`activation_memory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.losses import soft_dice_loss, soft_jaccard_loss, weighted_cross_entropy
from coursekit.metrics.segmentation import iou_score
from coursekit.runtime import device as default_device
from coursekit.train import StepFn, Trainer, eval_mode, to_device

__all__ = [
    "JointAugment",
    "LossName",
    "LOSSES",
    "make_step",
    "segmentation_step",
    "train_segmenter",
    "predict",
    "boundary_map",
    "boundary_f_score",
    "SegmentationScores",
    "evaluate",
    "activation_memory",
]

LossName = Literal["ce", "weighted_ce", "dice", "jaccard", "ce+dice"]
LOSSES: tuple[str, ...] = get_args(LossName)


# --------------------------------------------------------------------------------------------- data
@dataclass
class JointAugment:
    """Random augmentation applied to an image *and its mask together*: ``(image, mask) -> (image, mask)``.

    Geometric changes move both: horizontal / vertical flips, and a random crop of ``scale`` of the area
    resized back to the full size (the image bilinearly, the mask by nearest neighbour: a class index must
    stay a class index, never 2.5). Photometric changes (brightness, contrast) touch the image only.
    Flips are safe for Shapes (a mirrored triangle is still a triangle); for street scenes keep
    ``vflip=0``. Pass a seeded ``generator`` for reproducible draws.
    """

    hflip: float = 0.5  # probability of a left-right flip
    vflip: float = 0.5  # probability of an up-down flip
    scale: tuple[float, float] = (0.6, 1.0)  # crop area, as a fraction of the image; (1, 1): no crop
    brightness: float = 0.2  # image * U(1 - b, 1 + b)
    contrast: float = 0.2  # (image - mean) * U(1 - c, 1 + c) + mean
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1 (fractions of the area), got {self.scale}")

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {list(image.shape)} and mask {list(mask.shape)} must have the same H, W")
        if self._uniform(0, 1) < self.hflip:
            image, mask = image.flip(-1), mask.flip(-1)
        if self._uniform(0, 1) < self.vflip:
            image, mask = image.flip(-2), mask.flip(-2)
        if self.scale != (1.0, 1.0):
            image, mask = self._crop_resize(image, mask)
        return self._jitter(image), mask

    def _crop_resize(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        H, W = mask.shape[-2:]
        side = math.sqrt(self._uniform(*self.scale))  # square crops: the same zoom in x and y
        h, w = max(1, round(side * H)), max(1, round(side * W))
        top, left = round(self._uniform(0, H - h)), round(self._uniform(0, W - w))
        image = image[..., top : top + h, left : left + w]
        mask = mask[..., top : top + h, left : left + w]
        image = F.interpolate(image[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, None].float(), size=(H, W), mode="nearest")[0, 0].long()
        return image, mask

    def _jitter(self, image: Tensor) -> Tensor:
        image = image * self._uniform(1 - self.brightness, 1 + self.brightness)
        mean = image.mean()
        return ((image - mean) * self._uniform(1 - self.contrast, 1 + self.contrast) + mean).clamp(0, 1)


# ----------------------------------------------------------------------------------------- training
def _pixel_loss(logits: Tensor, masks: Tensor, loss: str, class_weights: Tensor | None) -> Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, masks)  # the mean over every pixel of every image
    if loss == "weighted_ce":
        return weighted_cross_entropy(logits, masks, class_weights)
    if loss == "dice":
        return soft_dice_loss(logits, masks)
    if loss == "jaccard":
        return soft_jaccard_loss(logits, masks)
    return F.cross_entropy(logits, masks) + soft_dice_loss(logits, masks)  # "ce+dice"


def make_step(loss: LossName = "ce", class_weights: Tensor | None = None) -> StepFn:
    """A :class:`coursekit.train.Trainer` step for ``(images [B, 3, H, W], masks [B, H, W])`` batches.

    ``loss``: ``"ce"`` (cross-entropy per pixel), ``"weighted_ce"`` (class ``c`` counts
    ``class_weights[c]`` times, :func:`coursekit.losses.class_weights_from_freq`), ``"dice"`` / ``"jaccard"``
    (soft Dice / differentiable IoU) or ``"ce+dice"``. Logs ``loss`` and pixel accuracy ``acc``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if loss == "weighted_ce" and class_weights is None:
        raise ValueError("loss='weighted_ce' needs class_weights (e.g. coursekit.losses.class_weights_from_freq)")

    def step(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
        images, masks = to_device(batch, device)
        logits = model(images)  # (B, C, H, W)
        weights = class_weights.to(device) if class_weights is not None else None
        acc = (logits.detach().argmax(1) == masks).float().mean()
        return {"loss": _pixel_loss(logits, masks, loss, weights), "acc": acc}

    return step


segmentation_step: StepFn = make_step("ce")


def train_segmenter(
    model: nn.Module,
    loader: Any,
    steps: int,
    lr: float = 3e-3,
    loss: LossName = "ce",
    class_weights: Tensor | None = None,
    *,
    weight_decay: float = 1e-4,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Trainer:
    """Train ``model`` for ``steps`` optimizer steps (AdamW, one-cycle learning rate peaking at ``lr``).

    The one-cycle schedule (warm up, then anneal to ~0) gets most out of a short fixed budget, which is
    what a comparison of architectures at equal steps needs. Returns the :class:`Trainer`: its
    ``train_time`` is the training time in seconds, ``history`` the curves.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    trainer = Trainer(model, optimizer, make_step(loss, class_weights), device=device, scheduler=schedule,
                      scheduler_interval="step")
    trainer.fit(loader, epochs=math.ceil(steps / len(loader)), max_steps=steps, progress=progress)
    return trainer


# --------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, *, tta: bool = False, batch_size: int = 64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Class probabilities ``Tensor[N, C, H, W]`` (on the CPU) for ``images`` ``Tensor[N, 3, H, W]``.

    ``tta=True``: flip test-time augmentation (deck 002): also run the mirrored image, mirror its output
    back and average the two probability maps. Costs a second forward pass; helps when the model's errors
    are not mirror-symmetric. Runs in eval mode; the model's mode is restored afterwards.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be a batch Tensor[N, 3, H, W], got {list(images.shape)}")
    dev = torch.device(device) if device is not None else default_device()
    out = []
    with eval_mode(model.to(dev)):
        for chunk in images.split(batch_size):
            x = chunk.to(dev)
            probs = model(x).softmax(1)  # (b, C, H, W)
            if tta:
                probs = (probs + model(x.flip(-1)).softmax(1).flip(-1)) / 2
            out.append(probs.cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ metrics
def boundary_map(labels: Tensor) -> Tensor:
    """Pixels on a label boundary: ``Tensor[..., H, W]`` int -> bool of the same shape.

    A pixel is a boundary pixel when one of its 4 neighbours (inside the image) has another label, so an
    edge between two regions is marked on both sides (2 pixels thick). The image border is not an edge.
    """
    if labels.dim() < 2 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer map [..., H, W], got {labels.dtype} {list(labels.shape)}")
    edge = torch.zeros_like(labels, dtype=torch.bool)
    dx = labels[..., :, 1:] != labels[..., :, :-1]  # (..., H, W-1): left and right neighbours differ
    dy = labels[..., 1:, :] != labels[..., :-1, :]  # (..., H-1, W)
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    return edge


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Grow a bool map ``[N, H, W]`` by ``radius`` pixels (a square: Chebyshev distance <= radius)."""
    if radius == 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def boundary_f_score(pred: Tensor, target: Tensor, tolerance: int = 1) -> float:
    """Boundary F-score (Csurka et al., BMVC 2013; DAVIS's F): how well predicted edges match true ones.

    Args:
        pred, target (Tensor[N, H, W] or Tensor[H, W] int): label maps.
        tolerance: a predicted boundary pixel counts as correct if a true one lies within this many
            pixels (Chebyshev distance), and vice versa.

    precision = share of predicted boundary pixels near a true boundary, recall = share of true boundary
    pixels near a predicted one, F = 2PR / (P + R), counted over all images together. mIoU is dominated
    by the interiors of large regions; this number looks only at the edges, where FCN-32s' x32 upsampling
    blurs. Returns 1.0 when neither has any boundary, 0.0 when only one has.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must have the same shape")
    if not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    pred_b = boundary_map(pred).reshape(-1, *pred.shape[-2:])
    true_b = boundary_map(target).reshape(-1, *target.shape[-2:])
    n_pred, n_true = int(pred_b.sum()), int(true_b.sum())
    if n_pred == 0 or n_true == 0:
        return 1.0 if n_pred == n_true else 0.0
    precision = int((pred_b & _dilate(true_b, tolerance)).sum()) / n_pred
    recall = int((true_b & _dilate(pred_b, tolerance)).sum()) / n_true
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass
class SegmentationScores:
    """What :func:`evaluate` measured on a held-out set."""

    miou: float  # mean of the per-class IoUs (classes present in pred or target)
    iou: Tensor  # Tensor[C] float64: IoU of each class, NaN for a class absent from both
    boundary_f: float  # boundary F-score at the given tolerance
    pixel_acc: float  # share of pixels labelled right (dominated by the background)


def evaluate(
    model: nn.Module, images: Tensor, masks: Tensor, num_classes: int, *, tta: bool = False,
    tolerance: int = 1, batch_size: int = 64, device: torch.device | str | None = None,
) -> SegmentationScores:
    """Per-class IoU, mIoU (:mod:`coursekit.metrics.segmentation`), boundary F-score and pixel accuracy of
    ``model`` on ``images`` ``[N, 3, H, W]`` with true ``masks`` ``[N, H, W]``; ``tta`` as in :func:`predict`."""
    pred = predict(model, images, tta=tta, batch_size=batch_size, device=device).argmax(1)  # (N, H, W)
    masks = masks.cpu()
    iou = iou_score(pred, masks, num_classes)
    miou = float(iou.nanmean()) if not iou.isnan().all() else math.nan
    return SegmentationScores(
        miou=miou,
        iou=iou,
        boundary_f=boundary_f_score(pred, masks, tolerance),
        pixel_acc=float((pred == masks).double().mean()),
    )


def activation_memory(model: nn.Module, x: Tensor) -> int:
    """Bytes of activations that autograd keeps for the backward pass of ``model(x)`` (parameters excluded).

    Measured, not estimated: every tensor saved for backward passes through a
    ``torch.autograd.graph.saved_tensors_hooks`` hook, counted once per storage. This is the memory that
    grows with the image size and the batch, and that deck 000's naive full-resolution net wastes.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())
