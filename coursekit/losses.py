"""Losses for imbalanced detection and segmentation: focal loss, soft Dice / Jaccard, weighted cross-entropy.

Taught in notebooks 05 (focal loss against class imbalance, deck 004's curve) and 06 (segmentation:
class imbalance, IoU as the metric and a differentiable IoU in the loss). Box regression uses torch's
own ``torch.nn.functional.smooth_l1_loss`` (Fast R-CNN; torchvision's detectors call it with
``beta=1/9``); ``yolo_loss`` / ``ssd_loss`` are written in the notebooks.

Notebook 11 adds ``nt_xent_loss``, SimCLR's contrastive loss with a temperature (deck 003).

Each loss is written out from scratch and equals the library one (``tests/test_losses.py``):
``torchvision.ops.sigmoid_focal_loss``, ``segmentation_models_pytorch.losses.DiceLoss`` / ``JaccardLoss``
and ``torch.nn.functional.cross_entropy(weight=...)``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_focal_loss",
    "focal_loss_curve",
    "soft_dice_loss",
    "soft_jaccard_loss",
    "weighted_cross_entropy",
    "class_counts",
    "class_weights_from_freq",
    "contrastive_loss",
    "triplet_loss",
    "nt_xent_loss",
]

Reduction = Literal["none", "mean", "sum"]
SegMode = Literal["binary", "multiclass", "multilabel"]
WeightMethod = Literal["inverse", "median", "log"]
_REDUCTIONS: tuple[str, ...] = get_args(Reduction)
_MODES: tuple[str, ...] = get_args(SegMode)
_METHODS: tuple[str, ...] = get_args(WeightMethod)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {_REDUCTIONS}")
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


# ---------------------------------------------------------------------------------------- focal loss
def _bce_with_logits(x: Tensor, t: Tensor) -> Tensor:
    """-[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]; ``1 - sigmoid(x) = sigmoid(-x)`` and logsigmoid is
    computed stably, so a logit of +-100 gives a finite loss instead of log(0)."""
    return -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2, reduction: Reduction = "none"
) -> Tensor:
    """Focal loss (Lin et al., RetinaNet): cross-entropy scaled down on examples already classified well.

    Args:
        inputs (Tensor[...]): logits, any shape (e.g. ``[N, A, num_classes]`` for a one-stage detector).
        targets (Tensor[...] float): 0 / 1 labels, same shape.
        alpha: weight of the positives (``1 - alpha`` for negatives); ``-1`` disables it.
        gamma: focusing parameter; 0 gives plain (alpha-weighted) binary cross-entropy.
        reduction: ``"none"`` (same shape as inputs), ``"mean"`` or ``"sum"``.

    ``FL = -alpha_t (1 - p_t)**gamma log(p_t)``, with ``p_t`` the predicted probability of the true
    label. With gamma = 2 an easy negative at ``p_t = 0.9`` weighs 100x less than in cross-entropy,
    so the thousands of easy background anchors stop drowning the few objects. Same as
    ``torchvision.ops.sigmoid_focal_loss``.
    """
    if not (0 <= alpha <= 1) and alpha != -1:
        raise ValueError(f"alpha must be in [0, 1], or -1 to disable it, got {alpha}")
    if inputs.shape != targets.shape:
        raise ValueError(
            f"inputs {list(inputs.shape)} and targets {list(targets.shape)} must have the same shape"
        )
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    p_t = p * targets + (1 - p) * (1 - targets)  # probability given to the true label
    loss = _bce_with_logits(inputs, targets) * (1 - p_t) ** gamma  # -log(p_t), down-weighted when p_t -> 1
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def focal_loss_curve(p_t: Tensor, gamma: float) -> Tensor:
    """``-(1 - p_t)**gamma log(p_t)``: deck 004's plot of the loss against the probability of the true class
    (gamma = 0 is cross-entropy). ``p_t`` in (0, 1]."""
    return -((1 - p_t) ** gamma) * torch.log(p_t)


# ------------------------------------------------------------------------------ soft Dice / Jaccard
def _probabilities_and_targets(
    logits: Tensor, target: Tensor, mode: str, from_logits: bool, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """Flatten to ``(probs, one_hot_target)``, each ``Tensor[N, C, H*W]``; ignored pixels are zero in both."""
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {_MODES}")
    if logits.dim() < 2 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits must be [N, C, ...] and target [N, ...] with the same N; got {list(logits.shape)}, "
            f"{list(target.shape)}"
        )
    N, C = logits.shape[:2]
    if from_logits:
        probs = logits.softmax(dim=1) if mode == "multiclass" else torch.sigmoid(logits)
    else:
        probs = logits
    probs = probs.reshape(N, C, -1)
    if mode == "multiclass":
        if target.is_floating_point() or target[0].numel() != probs.shape[2]:
            raise ValueError(
                f"multiclass target must be integer class indices of shape [N, H, W], got "
                f"{target.dtype} {list(target.shape)}"
            )
        target = target.reshape(N, 1, -1)
        keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
        one_hot = F.one_hot((target * keep).squeeze(1).long(), C).permute(0, 2, 1)  # (N, C, HW)
        return probs * keep, one_hot * keep
    if target.numel() != probs.numel():
        raise ValueError(
            f"{mode} target must have the shape of logits {list(logits.shape)}, got {list(target.shape)}"
        )
    target = target.reshape(N, C, -1)
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    return probs * keep, target * keep


def _soft_overlap(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per class, summed over batch and pixels: soft intersection, |prediction|, |target|. Each [C]."""
    target = target.to(probs.dtype)
    dims = (0, 2)
    return (probs * target).sum(dims), probs.sum(dims), target.sum(dims)


def _overlap_loss(score: Tensor, target_sum: Tensor, log_loss: bool, eps: float) -> Tensor:
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    # a class absent from the target has no defined score: it adds 0 (it still counts in the mean)
    return (loss * (target_sum > 0).to(loss.dtype)).mean()


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    mode: SegMode = "multiclass",
    *,
    smooth: float = 0.0,
    eps: float = 1e-7,
    from_logits: bool = True,
    ignore_index: int | None = None,
    log_loss: bool = False,
) -> Tensor:
    """Soft Dice loss, ``1 - Dice``, averaged over classes. -> scalar.

    Args:
        logits (Tensor[N, C, H, W]): raw scores (``C = 1`` for ``"binary"``); probabilities if not
            ``from_logits``.
        target: ``"multiclass"``: int64 ``Tensor[N, H, W]`` class indices; ``"binary"`` / ``"multilabel"``:
            0/1 ``Tensor[N, C, H, W]`` (or ``[N, H, W]`` for binary).
        mode: softmax over classes (``"multiclass"``) or a sigmoid per channel.
        smooth, eps: added to numerator and denominator / lower bound of the denominator.
        ignore_index: target value whose pixels count nowhere.
        log_loss: ``-log(Dice)`` instead of ``1 - Dice``.

    Dice = 2|P ∩ T| / (|P| + |T|) with soft sets: ``|P ∩ T| = sum p t`` over the batch and pixels, per
    class. Unlike pixel accuracy it does not reward predicting the frequent class everywhere, and unlike
    IoU it has a gradient. Written as ``(I + smooth) / ((|P| + |T|) / 2 + smooth)`` so the options mean
    exactly what they mean in ``segmentation_models_pytorch.losses.DiceLoss`` (equal results).
    """
    probs, onehot = _probabilities_and_targets(logits, target, mode, from_logits, ignore_index)
    inter, pred_sum, target_sum = _soft_overlap(probs, onehot)
    dice = (inter + smooth) / ((pred_sum + target_sum) / 2 + smooth).clamp_min(eps)
    return _overlap_loss(dice, target_sum, log_loss, eps)


def soft_jaccard_loss(
    logits: Tensor,
    target: Tensor,
    mode: SegMode = "multiclass",
    *,
    smooth: float = 0.0,
    eps: float = 1e-7,
    from_logits: bool = True,
    ignore_index: int | None = None,
    log_loss: bool = False,
) -> Tensor:
    """Soft Jaccard (differentiable IoU) loss, ``1 - IoU``, averaged over classes. -> scalar.

    ``IoU = |P ∩ T| / (|P| + |T| - |P ∩ T|)`` with the soft sets of :func:`soft_dice_loss` (same
    arguments). On hard 0/1 predictions it is exactly the IoU metric of notebook 06, which is why it is
    the loss to try when IoU is what you are graded on. Equal to ``segmentation_models_pytorch``'s
    ``JaccardLoss`` with the same options.
    """
    probs, onehot = _probabilities_and_targets(logits, target, mode, from_logits, ignore_index)
    inter, pred_sum, target_sum = _soft_overlap(probs, onehot)
    iou = (inter + smooth) / (pred_sum + target_sum - inter + smooth).clamp_min(eps)
    return _overlap_loss(iou, target_sum, log_loss, eps)


# ------------------------------------------------------------------------- weighted cross-entropy
def weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cross-entropy where class ``c`` counts ``class_weights[c]`` times. -> scalar (or per-pixel for "none").

    Args:
        logits (Tensor[N, C] or Tensor[N, C, H, W]): raw scores.
        target (int64 Tensor[N] or Tensor[N, H, W]): class indices; ``ignore_index`` pixels are skipped.
        class_weights (Tensor[C] | None): e.g. from :func:`class_weights_from_freq`; None = all ones.

    ``mean`` is a *weighted* mean, ``sum_i w[y_i] nll_i / sum_i w[y_i]``, the convention of
    ``F.cross_entropy(weight=...)``, so rescaling all weights does not change the loss.
    """
    if target.is_floating_point() or logits.dim() != target.dim() + 1:
        raise ValueError(
            f"target must hold integer class indices, [N] for logits [N, C] or [N, H, W] for "
            f"[N, C, H, W]; got {target.dtype} {list(target.shape)} for logits {list(logits.shape)}"
        )
    C = logits.shape[1]
    weights = logits.new_ones(C) if class_weights is None else class_weights.to(logits)
    if weights.shape != (C,):
        raise ValueError(f"class_weights must have one entry per class ({C}), got {list(weights.shape)}")
    keep = target != ignore_index
    safe_target = target.masked_fill(~keep, 0)[:, None]  # (N, 1, ...)
    nll = -logits.log_softmax(dim=1).gather(1, safe_target).squeeze(1)  # (N, ...)
    w = weights[safe_target.squeeze(1)] * keep
    if reduction == "mean":
        return (w * nll).sum() / w.sum()
    return _reduce(w * nll, reduction)


def class_counts(labels: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Pixels (or examples) of each class in an integer label tensor of any shape. -> int64 ``Tensor[C]``."""
    labels = labels.reshape(-1)
    if ignore_index is not None:
        labels = labels[labels != ignore_index]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (or be ignore_index), got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return torch.bincount(labels.long(), minlength=num_classes)


def class_weights_from_freq(freq: Tensor, method: WeightMethod = "median", c: float = 1.02) -> Tensor:
    """Per-class loss weights that undo class imbalance. -> float ``Tensor[C]``.

    Args:
        freq (Tensor[C]): class counts (:func:`class_counts`) or frequencies; only ratios matter.
        method:
            ``"inverse"``: ``1 / (C f_c)`` (scikit-learn's "balanced"; a balanced data set gets all ones);
            ``"median"``: ``median(f) / f_c``, median frequency balancing (Eigen & Fergus 2015, SegNet);
            ``"log"``: ``1 / ln(c + f_c)``, ENet's gentler, bounded weights (at most ``1 / ln(c)``).
        c: ENet's constant for ``"log"``.

    ``f_c`` is class c's share of all counted pixels; a class that never occurs gets weight 0 (and does
    not enter the median).
    """
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {_METHODS}")
    freq = torch.as_tensor(freq, dtype=torch.float64)
    if freq.dim() != 1 or (freq < 0).any() or freq.sum() <= 0:
        raise ValueError("freq must be a 1-D tensor of non-negative counts, not all zero")
    f = freq / freq.sum()
    present = f > 0
    if method == "inverse":
        weights = 1 / (len(f) * f)
    elif method == "median":
        weights = f[present].quantile(0.5) / f  # the true median (mean of the middle two when even)
    else:
        weights = 1 / torch.log(c + f)
    return torch.where(present, weights, torch.zeros_like(weights)).float()


# ---------------------------------------------------------------------------------------- NT-Xent (SimCLR)
def nt_xent_loss(z1: Tensor, z2: Tensor, tau: float = 0.5, normalize: bool = True,
                 include_positive: bool = True) -> Tensor:
    """NT-Xent / InfoNCE, the contrastive loss of SimCLR (Chen et al., 2020) and deck 003. -> scalar ``Tensor``.

    Args:
        z1 (Tensor[N, D]): embeddings of the first augmented view of N images.
        z2 (Tensor[N, D]): embeddings of the second view; row i of ``z1`` and of ``z2`` are the positive pair.
        tau: the temperature, > 0. Small tau sharpens the softmax onto the hardest negatives.
        normalize: L2-normalise the rows first (cosine similarity, as SimCLR); deck 003: "normalised or not".
        include_positive: SimCLR's denominator sums over every other one of the 2N embeddings, the positive
            included. ``False`` sums over the 2N - 2 negatives only, as deck 003 writes the formula
            (the "decoupled" loss of Yeh et al., 2021).

    Each of the 2N embeddings is an anchor i with positive j(i):
    ``L_i = -log(exp(s_ij / tau) / sum_k exp(s_ik / tau))``, ``k != i``; the loss is the mean over the 2N
    anchors. Equals ``pytorch_metric_learning.losses.NTXentLoss(temperature=tau)`` on ``cat([z1, z2])`` with
    labels ``cat([arange(N), arange(N)])`` (``tests/test_losses.py``). Notebook 11.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D) with the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if len(z1) < 2:
        raise ValueError("NT-Xent needs at least 2 images per batch: the other images are the negatives")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    N = len(z1)
    z = torch.cat([z1, z2])  # (2N, D)
    if normalize:
        z = F.normalize(z, dim=1)
    sim = z @ z.T / tau  # (2N, 2N)
    positive = torch.cat([torch.arange(N, 2 * N), torch.arange(N)]).to(z.device)  # j(i)
    self_mask = torch.eye(2 * N, dtype=torch.bool, device=z.device)
    if not include_positive:
        self_mask[torch.arange(2 * N), positive] = True
    pos = sim[torch.arange(2 * N), positive]  # (2N,)
    log_denominator = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1)  # (2N,)
    return (log_denominator - pos).mean()


# ---------------------------------------------------------------------------------------- metric learning
def contrastive_loss(x1: Tensor, x2: Tensor, y: Tensor, margin: float = 1.0, normalize: bool = True,
                     reduction: Reduction = "mean") -> Tensor:
    """Deck 003's contrastive loss of a siamese pair (Hadsell, Chopra and LeCun, 2006; Simo-Serra et al., 2015).

    ``l = y ||x1 - x2||^2 + (1 - y) max(0, m - ||x1 - x2||^2)``: similar pairs (``y = 1``) are pulled
    together, dissimilar ones (``y = 0``) pushed apart **until** their squared distance reaches the margin
    ``m``, "so that dissimilar pairs are not pushed apart forever". Deck 003: "the vectors x are normalised"
    (then ``||x1 - x2||^2 = 2 - 2 cos`` lies in [0, 4] and ``m`` is in those units).

    Args:
        x1, x2 (Tensor[N, D]): the two branches' embeddings. y (Tensor[N]): 1 similar, 0 dissimilar.
        margin: m > 0, in squared-distance units. normalize: L2-normalise the rows first.
        reduction: ``"none"`` (Tensor[N]), ``"mean"`` over pairs, ``"sum"``.

    ``pytorch_metric_learning.losses.ContrastiveLoss`` has the same terms when built with
    ``pos_margin=0, neg_margin=m, distance=LpDistance(power=2)`` (its default distance is *not* squared),
    but averages positive and negative pairs separately, each over its non-zero terms only
    (``AvgNonZeroReducer``), and adds the two means (``tests/test_losses.py``). Notebook 10, assignment 07.
    """
    if x1.dim() != 2 or x1.shape != x2.shape:
        raise ValueError("x1 and x2 must both be (N, D) with the same shape, "
                         f"got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if y.shape != (len(x1),):
        raise ValueError(f"y must be Tensor[N] of 0/1 pair labels with N = {len(x1)}, got shape {tuple(y.shape)}")
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    if normalize:
        x1, x2 = F.normalize(x1, dim=1), F.normalize(x2, dim=1)
    d2 = ((x1 - x2) ** 2).sum(1)  # (N,) squared distances
    y = y.to(d2.dtype)
    return _reduce(y * d2 + (1 - y) * (margin - d2).clamp(min=0), reduction)


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.2, squared: bool = False,
                 reduction: Reduction = "mean") -> Tensor:
    """The triplet loss (Schroff et al., FaceNet 2015; deck 003): ``max(0, d(a, p) - d(a, n) + m)``.

    The anchor must be closer to the positive (same identity) than to the negative by at least ``m``.
    Only the *order* of distances matters, not their values: no pair is pulled to distance 0.

    Args:
        anchor, positive, negative (Tensor[N, D]): embeddings of the triplets (not normalised here).
        margin: m >= 0. squared: use squared L2 distances (FaceNet) instead of L2.
        reduction: ``"none"`` (Tensor[N]), ``"mean"``, ``"sum"``.

    With ``squared=False`` this is ``torch.nn.functional.triplet_margin_loss(a, p, n, margin=m)`` (which
    adds ``eps=1e-6`` to the differences before the norm: equal to ~1e-6) and
    ``pytorch_metric_learning.losses.TripletMarginLoss(margin=m)`` given the triplets as ``indices_tuple``
    *on normalised embeddings* (its ``LpDistance`` normalises by default), with ``MeanReducer``
    (its default ``AvgNonZeroReducer`` averages over the non-zero terms only). Notebook 10, assignment 07.
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape or anchor.shape != negative.shape:
        raise ValueError(f"anchor, positive and negative must be (N, D) of one shape, got {tuple(anchor.shape)}, "
                         f"{tuple(positive.shape)}, {tuple(negative.shape)}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    d_ap = ((anchor - positive) ** 2).sum(1)  # (N,)
    d_an = ((anchor - negative) ** 2).sum(1)
    if not squared:
        d_ap, d_an = d_ap.clamp(min=1e-12).sqrt(), d_an.clamp(min=1e-12).sqrt()  # clamp: finite gradient at 0
    return _reduce((d_ap - d_an + margin).clamp(min=0), reduction)
