"""Anchors: the fixed boxes a detector classifies and refines, how they are matched and sampled.

Taught in notebooks 04 (Faster R-CNN's RPN) and 05 (SSD, class imbalance). Every function is written
from scratch and equals its torchvision counterpart (``tests/test_anchors.py`` checks it):

- :func:`generate_anchors`: ``AnchorGenerator`` (Faster R-CNN / RetinaNet), :func:`ssd_default_boxes`:
  ``DefaultBoxGenerator`` (SSD). Both return xyxy boxes in image pixels.
- :func:`match_anchors`: ``Matcher``: each anchor gets a ground-truth index, background or ignore.
- The R-CNN box deltas of ``BoxCoder`` (an anchor moved onto its object) are
  :func:`coursekit.boxes.encode_boxes` / :func:`coursekit.boxes.decode_boxes`.
- :func:`hard_negative_mining` (SSD's loss) and :func:`sample_balanced` (``BalancedPositiveNegativeSampler``,
  the RPN's 256 anchors per image): two answers to "99% of the anchors are background".
- :func:`kmeans_anchors` (YOLOv2's "dimension clusters", notebook 05): anchor shapes learned from the
  training boxes by k-means with the distance ``1 - IoU``; :func:`wh_iou` is that IoU, :func:`mean_best_iou`
  the paper's measure of how well a set of priors fits the boxes. No torchvision counterpart: the tests
  compare them with a plain Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from coursekit.boxes import box_iou, check_boxes
from coursekit.runtime import draw_device

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "cell_anchors",
    "generate_anchors",
    "ssd_default_boxes",
    "match_anchors",
    "labels_from_matches",
    "hard_negative_mining",
    "sample_balanced",
    "wh_iou",
    "kmeans_anchors",
    "mean_best_iou",
]

BACKGROUND = -1  # match_anchors: the anchor overlaps no object enough (IoU < low)
IGNORE = -2  # match_anchors: ambiguous (low <= IoU < high); it takes no part in the loss


# --------------------------------------------------------------------------------------- generation
def cell_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype = torch.float32
) -> Tensor:
    """The anchors of one feature-map cell, centred on (0, 0): ``Tensor[len(aspect_ratios) * len(sizes), 4]``.

    An anchor of size ``s`` and aspect ratio ``r = h / w`` has area ``s**2``: ``w = s / sqrt(r)``,
    ``h = s * sqrt(r)``. Ordered ratio-major (all sizes of the first ratio first); corners rounded
    to whole pixels, a convention torchvision kept from Detectron.
    """
    scales = torch.as_tensor(sizes, dtype=dtype)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype)
    h_ratio = torch.sqrt(ratios)
    w_ratio = 1 / h_ratio
    ws = (w_ratio[:, None] * scales[None, :]).reshape(-1)  # (R * S,)
    hs = (h_ratio[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def _check_levels(feature_sizes: Sequence, **per_level: Sequence) -> None:
    for name, values in per_level.items():
        if len(values) != len(feature_sizes):
            raise ValueError(
                f"{name} has {len(values)} entries but there are {len(feature_sizes)} feature maps; "
                "give one tuple per feature map, e.g. sizes=[(32,), (64,), (128,)]"
            )
        if any(len(v) == 0 for v in values):
            raise ValueError(f"every entry of {name} needs at least one value")


def generate_anchors(
    feature_sizes: list[tuple[int, int]],
    image_size: tuple[int, int],
    sizes: list[tuple[float, ...]],
    aspect_ratios: list[tuple[float, ...]],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """All anchors of a feature pyramid, as torchvision's ``AnchorGenerator``. -> ``Tensor[A, 4]`` xyxy.

    Args:
        feature_sizes: ``(h, w)`` of each feature map, e.g. ``[(100, 152), (50, 76), (25, 38)]``.
        image_size: ``(H, W)`` of the (padded) input image; level ``l``'s stride is ``H // h``, ``W // w``.
        sizes: anchor sizes (sqrt of the area, pixels) per level, e.g. ``[(32,), (64,), (128,)]``.
        aspect_ratios: ratios ``h / w`` per level, e.g. ``[(0.5, 1.0, 2.0)] * 3``.

    ``A = sum_l h_l * w_l * len(sizes[l]) * len(aspect_ratios[l])``, ordered level by level, then row by
    row and column by column over the cells, then the cell's anchors (:func:`cell_anchors`): the order a
    detection head's output ``[N, A_cell * 4, h, w]`` is flattened in. Note torchvision puts anchor
    centres at the cells' top-left corners ``(x * stride, y * stride)``, not at the cell centres.
    """
    _check_levels(feature_sizes, sizes=sizes, aspect_ratios=aspect_ratios)
    H, W = image_size
    levels = []
    for (h, w), size, ratios in zip(feature_sizes, sizes, aspect_ratios, strict=True):
        if h <= 0 or w <= 0 or h > H or w > W:
            raise ValueError(
                f"feature size {(h, w)} must be positive and no larger than image_size {image_size}"
            )
        stride_y, stride_x = H // h, W // w
        ys = torch.arange(h, dtype=dtype) * stride_y
        xs = torch.arange(w, dtype=dtype) * stride_x
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (h * w, 1, 4)
        levels.append(
            (centres + cell_anchors(size, ratios, dtype)[None]).reshape(-1, 4)
        )  # (h * w * A_cell, 4)
    return torch.cat(levels)


def _ssd_scales(levels: int, min_ratio: float, max_ratio: float) -> list[float]:
    """SSD's box scales (fraction of the image), evenly spaced from min to max, plus 1.0 for s'_last."""
    if levels == 1:
        return [min_ratio, max_ratio]
    step = (max_ratio - min_ratio) / (levels - 1.0)
    return [min_ratio + step * k for k in range(levels)] + [1.0]


def _ssd_wh(scale: float, next_scale: float, ratios: Sequence[float]) -> list[list[float]]:
    # two square boxes (s and sqrt(s * s_next)), then a wide and a tall box for every extra ratio
    wh = [[scale, scale], [math.sqrt(scale * next_scale)] * 2]
    for r in ratios:
        w, h = scale * math.sqrt(r), scale / math.sqrt(r)
        wh += [[w, h], [h, w]]
    return wh


def ssd_default_boxes(
    feature_sizes: list[tuple[int, int]],
    image_size: tuple[int, int],
    aspect_ratios: list[tuple[float, ...]],
    min_ratio: float = 0.15,
    max_ratio: float = 0.9,
    scales: list[float] | None = None,
    steps: list[int] | None = None,
    clip: bool = True,
) -> Tensor:
    """SSD's default boxes, as torchvision's ``DefaultBoxGenerator``. -> ``Tensor[A, 4]`` xyxy pixels.

    Level ``k`` of ``m`` has boxes of scale ``s_k = min + (max - min) k / (m - 1)`` (a fraction of the
    image): a square of side ``s_k``, a square of side ``sqrt(s_k s_{k+1})``, and for every ratio ``r`` in
    ``aspect_ratios[k]`` a ``s_k sqrt(r) x s_k / sqrt(r)`` box and its transpose (SSD paper, p. 6). Boxes
    are centred on the cells, ``((j + 0.5) / f, (i + 0.5) / f)``; ``steps`` replaces ``f`` by
    ``image / step``; ``clip`` clips widths/heights to 1.
    """
    if steps is not None and len(steps) != len(aspect_ratios):
        raise ValueError(f"steps has {len(steps)} entries; give one per feature map ({len(aspect_ratios)})")
    if len(feature_sizes) != len(aspect_ratios):
        raise ValueError(f"{len(feature_sizes)} feature sizes but {len(aspect_ratios)} aspect_ratios entries")
    scales = _ssd_scales(len(aspect_ratios), min_ratio, max_ratio) if scales is None else list(scales)
    H, W = image_size
    levels = []
    for k, (fh, fw) in enumerate(feature_sizes):
        wh = torch.as_tensor(_ssd_wh(scales[k], scales[k + 1], aspect_ratios[k]), dtype=torch.float32)
        wh = wh.clamp(0, 1) if clip else wh  # (B, 2) relative sizes
        per_y, per_x = (fh, fw) if steps is None else (H / steps[k], W / steps[k])
        cy, cx = torch.meshgrid(
            ((torch.arange(fh) + 0.5) / per_y).float(),
            ((torch.arange(fw) + 0.5) / per_x).float(),
            indexing="ij",
        )
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # (fh * fw, 1, 2)
        boxes = torch.cat([centres - 0.5 * wh, centres + 0.5 * wh], dim=-1)  # (fh * fw, B, 4), relative
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels) * torch.tensor([W, H, W, H])


# ----------------------------------------------------------------------------------------- matching
def match_anchors(
    anchors: Tensor, gt_boxes: Tensor, high: float = 0.5, low: float = 0.4, allow_low_quality: bool = True
) -> Tensor:
    """Assign every anchor a ground-truth box. -> int64 ``Tensor[A]``.

    Args:
        anchors (Tensor[A, 4]), gt_boxes (Tensor[G, 4]): xyxy boxes.
        high, low: IoU thresholds (RetinaNet 0.5 / 0.4, the RPN 0.7 / 0.3).
        allow_low_quality: also give every ground truth its best anchor(s) even below ``high``, so no
            object goes unmatched (ties included: all anchors with that best IoU).

    Returns the index in ``[0, G)`` of the anchor's best ground truth when its IoU ``>= high``,
    :data:`BACKGROUND` (-1) when ``< low``, :data:`IGNORE` (-2) in between. Equal to torchvision's
    ``Matcher(high, low, allow_low_quality)``, except that an image without ground truth gives all
    background (torchvision raises; its detectors special-case such images to exactly that).
    As in torchvision, a ground truth that overlaps no anchor at all (IoU 0 everywhere) makes every
    anchor its "best": keep ground truths inside the image.
    """
    check_boxes(anchors, "anchors")
    check_boxes(gt_boxes, "gt_boxes")
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    if gt_boxes.shape[0] == 0:
        return torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.int64, device=anchors.device)
    if anchors.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    best_iou, best_gt = iou.max(dim=0)  # (A,): each anchor's best ground truth
    matches = best_gt.clone()
    matches[best_iou < low] = BACKGROUND
    matches[(best_iou >= low) & (best_iou < high)] = IGNORE
    if allow_low_quality:
        best_for_gt = iou.max(dim=1, keepdim=True).values  # (G, 1)
        is_someones_best = (iou == best_for_gt).any(dim=0)  # (A,)
        matches = torch.where(is_someones_best, best_gt, matches)
    return matches


def labels_from_matches(matches: Tensor) -> Tensor:
    """Matches of :func:`match_anchors` -> sampler labels (int64): 1 object, 0 background, -1 ignore."""
    labels = (matches >= 0).long()
    return labels.masked_fill(matches == IGNORE, -1)


# ------------------------------------------------------------------------------------- imbalance
def _rank_desc(keys: Tensor) -> Tensor:
    """Rank of every entry of each row when sorted by decreasing key (0 = largest; ties keep their order)."""
    order = keys.argsort(dim=-1, descending=True, stable=True)
    return order.argsort(dim=-1)


def _as_rows(t: Tensor, name: str) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() not in (1, 2):
        raise ValueError(
            f"{name} must be a Tensor[A] (one image) or Tensor[N, A], got {getattr(t, 'shape', t)}"
        )
    return t[None] if t.dim() == 1 else t


def hard_negative_mining(loss: Tensor, labels: Tensor, neg_pos_ratio: int = 3) -> Tensor:
    """SSD's answer to imbalance: keep all positives and only the hardest negatives. -> bool mask.

    Args:
        loss (Tensor[N, A] or Tensor[A]): the classification loss of every anchor of each image.
        labels (int Tensor, same shape): class per anchor, ``> 0`` object, ``0`` background, ``< 0`` ignored.
        neg_pos_ratio: negatives kept per positive (3 in SSD).

    Per image, with ``P`` positives: the ``k = neg_pos_ratio * P`` background anchors of largest loss
    (all of them if fewer). The loss is then summed over the mask and divided by the number of
    positives. Same selection as torchvision's ``SSD.compute_loss``.
    """
    loss_rows, label_rows = _as_rows(loss, "loss"), _as_rows(labels, "labels")
    if loss_rows.shape != label_rows.shape:
        raise ValueError(f"loss {list(loss.shape)} and labels {list(labels.shape)} must have the same shape")
    positive, negative = label_rows > 0, label_rows == 0
    k = neg_pos_ratio * positive.sum(dim=1, keepdim=True)  # (N, 1)
    negative_loss = loss_rows.detach().masked_fill(~negative, -math.inf)  # positives can't be picked
    hard = negative & (_rank_desc(negative_loss) < k)
    return (positive | hard).reshape(loss.shape)


def sample_balanced(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample a fixed-size minibatch of anchors with a capped share of positives (Faster R-CNN).

    Args:
        labels (int Tensor[A] or Tensor[N, A]): ``>= 1`` positive, ``0`` negative, ``-1`` ignored
            (:func:`labels_from_matches` makes them).
        batch_size_per_image: anchors per image (256 for the RPN, 512 for the box head).
        positive_fraction: the largest share of positives (0.5 for the RPN, 0.25 for the box head).
        generator: a ``torch.Generator`` for reproducible draws.

    Returns ``(positive_mask, negative_mask)``, bool tensors of ``labels``'s shape. Per image: up to
    ``int(batch * fraction)`` positives, the rest of the batch negatives, each a uniformly random
    subset; the same counts as torchvision's ``BalancedPositiveNegativeSampler``.
    """
    rows = _as_rows(labels, "labels")
    positive, negative = rows >= 1, rows == 0
    num_pos = positive.sum(dim=1).clamp(max=int(batch_size_per_image * positive_fraction))  # (N,)
    num_neg = negative.sum(dim=1).minimum(batch_size_per_image - num_pos)
    # a uniformly random subset of size k = the k candidates with the largest random keys
    keys = torch.rand(rows.shape, generator=generator, device=draw_device(generator, rows.device)).to(rows.device)
    pick_pos = positive & (_rank_desc(keys.masked_fill(~positive, -1.0)) < num_pos[:, None])
    pick_neg = negative & (_rank_desc(keys.masked_fill(~negative, -1.0)) < num_neg[:, None])
    return pick_pos.reshape(labels.shape), pick_neg.reshape(labels.shape)


# ------------------------------------------------------------------------------- learned priors
def _check_wh(wh: Tensor, name: str) -> None:
    if not isinstance(wh, Tensor) or wh.dim() != 2 or wh.shape[1] != 2 or not wh.is_floating_point():
        raise ValueError(f"{name} must be a float Tensor[N, 2] of (width, height), got {getattr(wh, 'shape', wh)}")
    if wh.numel() and not (wh > 0).all():
        raise ValueError(f"{name} must hold positive widths and heights (drop empty boxes first)")


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of box *shapes*: ``wh1`` (Tensor[N, 2]) x ``wh2`` (Tensor[M, 2]) (width, height) -> Tensor[N, M].

    Two boxes are compared as if they shared their centre, so only the shape counts: the distance YOLOv2
    clusters with (``1 - wh_iou``) and the rule that picks a ground truth's anchor. Computed by
    :func:`coursekit.boxes.box_iou` on boxes centred on (0, 0).
    """
    _check_wh(wh1, "wh1")
    _check_wh(wh2, "wh2")
    return box_iou(torch.cat([-wh1 / 2, wh1 / 2], dim=1), torch.cat([-wh2 / 2, wh2 / 2], dim=1))


def mean_best_iou(wh: Tensor, anchors: Tensor) -> float:
    """How well anchor shapes fit box shapes: the mean over boxes of the IoU with their best anchor
    (YOLOv2's "Avg IOU", Table 1 of the paper). ``wh`` (Tensor[N, 2]), ``anchors`` (Tensor[K, 2])."""
    return wh_iou(wh, anchors).max(dim=1).values.mean().item()


def kmeans_anchors(wh: Tensor, k: int, *, iterations: int = 300, seed: int = 0) -> Tensor:
    """YOLOv2's dimension clusters: ``k`` anchor shapes for the box shapes ``wh`` (Tensor[N, 2], pixels).
    -> ``Tensor[k, 2]`` (width, height), sorted by area.

    K-means with the distance ``d(box, centroid) = 1 - IoU(box, centroid)`` (:func:`wh_iou`): Euclidean
    distance would let big boxes make bigger errors than small ones, while IoU is what the detector is
    scored on. Lloyd's iterations from ``k`` distinct boxes drawn with ``seed``: assign each box to the
    centroid it overlaps most, move each centroid to the mean shape of its boxes (a centroid left with no
    box stays where it is), stop when no assignment changes or after ``iterations``.
    """
    _check_wh(wh, "wh")
    if not 1 <= k <= len(wh):
        raise ValueError(f"k must be between 1 and the number of boxes ({len(wh)}), got {k}")
    first = torch.randperm(len(wh), generator=torch.Generator().manual_seed(seed))[:k]
    centroids = wh[first.to(wh.device)].clone()
    assignment = None
    for _ in range(iterations):
        new = wh_iou(wh, centroids).argmax(dim=1)  # (N,): the nearest centroid, i.e. the largest IoU
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        for c in range(k):
            members = wh[assignment == c]
            if len(members):
                centroids[c] = members.mean(dim=0)
    return centroids[(centroids[:, 0] * centroids[:, 1]).argsort()]
