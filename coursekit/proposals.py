"""Region proposals: a from-scratch Selective Search and how to measure a proposer (count, time, recall).

Taught in notebook 04 (the R-CNN family). Deck 000: "look for *blobby* regions", Selective Search gives
~2000 proposals in ~2 s on a CPU; R-CNN and Fast R-CNN classify those regions.

Selective Search (Uijlings et al., IJCV 2013) in three steps:

1. **Over-segment** the image into small regions with Felzenszwalb and Huttenlocher's graph-based
   segmentation (``skimage.segmentation.felzenszwalb``).
2. **Group hierarchically**: repeatedly merge the two *adjacent* regions that are most similar, until one
   region covers the image. Similarity is a sum of terms in [0, 1] (:data:`SIMILARITIES`): ``"colour"``
   (histogram intersection of colour histograms), ``"size"`` (small regions merge first, so large
   regions do not eat everything) and ``"fill"`` (regions whose union fills its bounding box well merge
   first). Every region ever formed, initial or merged, is a proposal: its bounding box.
3. **Diversify**: repeat with several colour spaces, segmentation scales and similarity mixes
   (:data:`MODES`), pool the boxes, rank them (regions formed near the top of a hierarchy first, with a
   seeded random jitter as in the paper) and drop duplicates.

Everything is NumPy on the CPU; the grouping loop is vectorised over the neighbours of each new region.
Boxes are float ``xyxy`` pixels (``x2 = last column + 1``, as the ground truth of ``coursekit.data``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from coursekit.boxes import box_iou, check_boxes

__all__ = [
    "Strategy",
    "Hierarchy",
    "MODES",
    "SIMILARITIES",
    "felzenszwalb_regions",
    "hierarchical_grouping",
    "regions_after",
    "selective_search",
    "best_overlaps",
    "proposal_recall",
]

ColourSpace = Literal["rgb", "hsv", "lab"]
Similarity = Literal["colour", "size", "fill"]
Mode = Literal["single", "fast", "quality"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
COLOUR_SPACES: tuple[str, ...] = get_args(ColourSpace)
_MIN_REGION, _REGION_FRACTION = 10, 1600  # default smallest initial region: max(10, H * W / 1600) pixels
_BINS = 25  # colour histogram bins per channel (the paper's choice: 3 x 25 = 75 numbers per region)


@dataclass(frozen=True)
class Strategy:
    """One hierarchical grouping: the colour space, the over-segmentation scale and the similarity mix."""

    colour_space: ColourSpace = "rgb"  # where colours are compared (and the image is over-segmented)
    scale: float = 100.0  # Felzenszwalb's k: larger -> fewer, larger initial regions
    similarity: tuple[Similarity, ...] = SIMILARITIES  # the terms summed into the similarity


# The diversification of the paper's "fast" mode (2 colour spaces x 2 scales x 2 similarity mixes), with
# scales for the course's 128-px scenes; "quality" adds Lab and a finer scale.
MODES: dict[str, tuple[Strategy, ...]] = {
    "single": (Strategy("rgb", 100.0, SIMILARITIES),),
    "fast": tuple(
        Strategy(cs, k, sim)
        for cs in ("rgb", "hsv")
        for k in (50.0, 150.0)
        for sim in (SIMILARITIES, ("size", "fill"))
    ),
    "quality": tuple(
        Strategy(cs, k, sim)
        for cs in ("rgb", "hsv", "lab")
        for k in (25.0, 50.0, 100.0, 200.0)
        for sim in (SIMILARITIES, ("size", "fill"), ("colour", "size"))
    ),
}


@dataclass
class Hierarchy:
    """The result of :func:`hierarchical_grouping` on ``R`` initial regions.

    ``boxes``: float64 ``[2R - 1, 4]`` xyxy, rows ``0..R-1`` the initial regions, row ``R + t`` the region
    formed by merge ``t``; ``merges``: int64 ``[R - 1, 2]``, the two regions joined at merge ``t``;
    ``sizes``: ``[2R - 1]`` pixel counts. The last row is the whole image.
    """

    boxes: np.ndarray
    merges: np.ndarray
    sizes: np.ndarray

    @property
    def num_initial(self) -> int:
        return len(self.boxes) - len(self.merges)


# ----------------------------------------------------------------------------------- step 1: regions
def _as_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """``Tensor[3, H, W]`` in [0, 1] (or an ``H x W x 3`` array, uint8 or float) -> float64 ``H x W x 3``."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a Tensor[3, H, W] (RGB, channels first), got {list(image.shape)}")
        return image.detach().cpu().permute(1, 2, 0).double().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 (RGB, channels last) when given as an array, got {arr.shape}")
    return arr / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)


def _to_colour_space(rgb: np.ndarray, colour_space: str) -> np.ndarray:
    """``H x W x 3`` RGB in [0, 1] -> the same image in ``colour_space``, each channel scaled to [0, 1]."""
    import skimage.color

    if colour_space == "rgb":
        return np.clip(rgb, 0, 1)
    if colour_space == "hsv":
        return skimage.color.rgb2hsv(np.clip(rgb, 0, 1))
    if colour_space == "lab":
        lab = skimage.color.rgb2lab(np.clip(rgb, 0, 1))  # L in [0, 100], a and b in about [-128, 127]
        return np.clip((lab + [0.0, 128.0, 128.0]) / [100.0, 255.0, 255.0], 0, 1)
    raise ValueError(f"unknown colour_space {colour_space!r}; choose one of {COLOUR_SPACES}")


def felzenszwalb_regions(image: np.ndarray, scale: float, sigma: float = 0.8, min_size: int = 10) -> np.ndarray:
    """Graph-based over-segmentation: ``H x W x 3`` floats -> int64 ``H x W`` labels ``0..R-1``.

    A thin wrapper of ``skimage.segmentation.felzenszwalb`` whose labels are renumbered to be contiguous.
    """
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


# ----------------------------------------------------------------------------------- step 2: grouping
def _region_features(image: np.ndarray, labels: np.ndarray, num: int) -> tuple[np.ndarray, ...]:
    """Per region, all at once with ``bincount``: sizes ``[R]``, boxes ``[R, 4]`` xyxy, colour histograms
    ``[R, 3 * 25]`` (L1-normalised, so histogram intersection is in [0, 1])."""
    H, W = labels.shape
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=num).astype(np.float64)
    # sort the pixels by region once; then each region's min / max is one reduceat segment
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int64)
    ys, xs = np.divmod(order, W)
    boxes = np.stack(
        [np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts),
         np.maximum.reduceat(xs, starts) + 1, np.maximum.reduceat(ys, starts) + 1], 1
    ).astype(np.float64)
    bins = np.minimum((image.reshape(-1, 3) * _BINS).astype(np.int64), _BINS - 1)  # (H*W, 3)
    hist = np.stack(
        [np.bincount(flat * _BINS + bins[:, c], minlength=num * _BINS).reshape(num, _BINS) for c in range(3)], 1
    ).reshape(num, 3 * _BINS)
    return sizes, boxes, hist / hist.sum(1, keepdims=True)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Pairs ``(a, b)`` with ``a < b`` of regions that touch (4-neighbourhood): int64 ``[P, 2]``, unique."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    differ = a != b
    pairs = np.sort(np.stack([a[differ], b[differ]], 1), axis=1)
    return np.unique(pairs, axis=0).reshape(-1, 2)


def _similarity(i: np.ndarray, j: np.ndarray, sizes, boxes, hist, image_area: float, terms) -> np.ndarray:
    """Similarity of region pairs ``(i[k], j[k])``: the sum of the chosen terms, each in [0, 1]."""
    sim = np.zeros(len(i))
    if "colour" in terms:  # histogram intersection: 1 when the two colour distributions are the same
        sim += np.minimum(hist[i], hist[j]).sum(1)
    if "size" in terms:  # 1 - the share of the image the pair covers: small regions merge first
        sim += 1.0 - (sizes[i] + sizes[j]) / image_area
    if "fill" in terms:  # 1 - the part of the pair's bounding box that neither region fills
        hull = np.concatenate([np.minimum(boxes[i, :2], boxes[j, :2]), np.maximum(boxes[i, 2:], boxes[j, 2:])], 1)
        hull_area = (hull[:, 2] - hull[:, 0]) * (hull[:, 3] - hull[:, 1])
        sim += 1.0 - (hull_area - sizes[i] - sizes[j]) / image_area
    return sim


def _check_similarity(similarity: Sequence[str]) -> tuple[str, ...]:
    terms = tuple(similarity)
    if not terms or any(t not in SIMILARITIES for t in terms):
        raise ValueError(f"similarity must be a non-empty subset of {SIMILARITIES}, got {terms!r}")
    return terms


def hierarchical_grouping(
    image: np.ndarray, labels: np.ndarray, similarity: Sequence[Similarity] = SIMILARITIES
) -> Hierarchy:
    """Merge the most similar pair of adjacent regions until one is left (Selective Search, step 2).

    Args:
        image: ``H x W x 3`` floats in [0, 1], in the colour space the colours are compared in.
        labels: int ``H x W`` region labels ``0..R-1`` (:func:`felzenszwalb_regions`).
        similarity: the terms of :data:`SIMILARITIES` to add up.

    ``R - 1`` merges; each one removes the pairs of the two merged regions and scores the new region
    against their neighbours in one vectorised call. Ties go to the pair listed first.
    """
    terms = _check_similarity(similarity)
    H, W = labels.shape
    R = int(labels.max()) + 1
    total = 2 * R - 1
    initial = _region_features(image, labels, R)
    # rows R.. are filled in as merges create regions
    sizes, boxes, hist = (np.concatenate([a, np.zeros((total - R, *a.shape[1:]))]) for a in initial)
    pairs = _adjacent_pairs(labels)  # (P, 2), alive pairs only
    sims = _similarity(pairs[:, 0], pairs[:, 1], sizes, boxes, hist, H * W, terms)
    merges = np.zeros((R - 1, 2), dtype=np.int64)
    for t in range(R - 1):
        if len(pairs) == 0:  # cannot happen for a label map of a connected image; guard the loop anyway
            raise ValueError("the regions are not connected: labels must come from one image's segmentation")
        i, j = pairs[np.argmax(sims)]
        new = R + t
        merges[t] = (i, j)
        sizes[new] = sizes[i] + sizes[j]
        boxes[new] = np.concatenate([np.minimum(boxes[i, :2], boxes[j, :2]), np.maximum(boxes[i, 2:], boxes[j, 2:])])
        hist[new] = (sizes[i] * hist[i] + sizes[j] * hist[j]) / sizes[new]  # the union's histogram
        touches = (pairs == i) | (pairs == j)  # (P, 2)
        involved = touches.any(1)
        neighbours = np.unique(pairs[involved][~touches[involved]])  # the other end of each removed pair
        pairs, sims = pairs[~involved], sims[~involved]
        if len(neighbours):
            new_col = np.full(len(neighbours), new)
            pairs = np.concatenate([pairs, np.stack([neighbours, new_col], 1)])
            sims = np.concatenate([sims, _similarity(neighbours, new_col, sizes, boxes, hist, H * W, terms)])
    return Hierarchy(boxes=boxes, merges=merges, sizes=sizes)


def regions_after(labels: np.ndarray, hierarchy: Hierarchy, steps: int) -> np.ndarray:
    """The segmentation after the first ``steps`` merges: int64 ``H x W`` labels (ids of :class:`Hierarchy`).

    ``steps = 0`` gives back ``labels``; ``steps = R - 1`` one region, the whole image.
    """
    R = hierarchy.num_initial
    if not 0 <= steps <= R - 1:
        raise ValueError(f"steps must be in [0, {R - 1}] (the number of merges), got {steps}")
    owner = np.arange(2 * R - 1)
    for t in range(steps):  # each merge hands its two regions to the new one
        owner[hierarchy.merges[t]] = R + t
    # follow the chain of owners until it stops (a region merged twice points to its newest owner)
    for _ in range(steps + 1):
        nxt = owner[owner]
        if np.array_equal(nxt, owner):
            break
        owner = nxt
    return owner[labels]


# ------------------------------------------------------------------------------- step 3: diversify
def _strategy_boxes(rgb: np.ndarray, strategy: Strategy, sigma: float, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of one hierarchy and their rank in it (1 = the whole image, larger = lower in the tree)."""
    image = _to_colour_space(rgb, strategy.colour_space)
    labels = felzenszwalb_regions(image, strategy.scale, sigma, min_size)
    hierarchy = hierarchical_grouping(image, labels, strategy.similarity)
    rank = np.arange(len(hierarchy.boxes), 0, -1, dtype=np.float64)  # the last region formed ranks 1
    return hierarchy.boxes, rank


def selective_search(
    image: Tensor | np.ndarray,
    mode: Mode | Sequence[Strategy] = "fast",
    *,
    sigma: float = 0.8,
    min_size: int | None = None,
    min_box_size: float = 2.0,
    max_proposals: int | None = 2000,
    seed: int = 0,
) -> Tensor:
    """Selective Search proposals for one image: float32 ``Tensor[K, 4]`` xyxy pixels, best first.

    Args:
        image: ``Tensor[3, H, W]`` in [0, 1] (or an ``H x W x 3`` array).
        mode: ``"single"`` (one hierarchy), ``"fast"`` (8), ``"quality"`` (36), or your own strategies.
        sigma, min_size: Felzenszwalb's smoothing and smallest region in pixels (default: 1/1600 of the
            image, at least 10: 10 px on a 128-px scene, 164 px on a 512-px photo).
        min_box_size: drop boxes narrower or shorter than this (pixels).
        max_proposals: keep at most this many (``None``: all).
        seed: the random jitter of the ranking; the same seed gives the same boxes in the same order.

    Ranking, as in the paper: a region's value is its rank in its hierarchy times a uniform random
    number, boxes sorted by increasing value; a box found by several strategies keeps its best value.
    """
    strategies = MODES.get(mode) if isinstance(mode, str) else tuple(mode)
    if strategies is None or not strategies or not all(isinstance(s, Strategy) for s in strategies):
        raise ValueError(f"mode must be one of {tuple(MODES)} or a sequence of Strategy, got {mode!r}")
    if max_proposals is not None and max_proposals < 1:
        raise ValueError(f"max_proposals must be >= 1 or None, got {max_proposals}")
    rgb = _as_hwc(image)
    if min_size is None:  # fine regions on small scenes, not thousands of specks on a photo
        min_size = max(_MIN_REGION, rgb.shape[0] * rgb.shape[1] // _REGION_FRACTION)
    rng = np.random.default_rng(seed)
    all_boxes, all_values = [], []
    for strategy in strategies:
        boxes, rank = _strategy_boxes(rgb, strategy, sigma, min_size)
        all_boxes.append(boxes)
        all_values.append(rank * rng.random(len(rank)))
    boxes, values = np.concatenate(all_boxes), np.concatenate(all_values)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh >= min_box_size).all(1)
    boxes, values = boxes[keep], values[keep]
    order = np.argsort(values, kind="stable")
    boxes = boxes[order]
    _, first = np.unique(boxes, axis=0, return_index=True)  # duplicates: keep the best-ranked copy
    boxes = boxes[np.sort(first)][:max_proposals]
    return torch.from_numpy(boxes).float()


# ------------------------------------------------------------------------------------ measuring
def _check_lists(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor]) -> None:
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"one proposal tensor per image: got {len(proposals)} proposal sets, {len(gt_boxes)} images")
    for i, (p, g) in enumerate(zip(proposals, gt_boxes, strict=True)):
        check_boxes(p, f"proposals[{i}]")
        check_boxes(g, f"gt_boxes[{i}]")


def best_overlaps(
    proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], max_proposals: int | None = None
) -> Tensor:
    """For every ground-truth box of every image, its best IoU with the image's first ``max_proposals``
    proposals: ``Tensor[G]`` (all images' boxes concatenated; 0 where an image has no proposal).

    The mean is the paper's "average best overlap" (ABO); recall at ``t`` is the share ``>= t``.
    """
    _check_lists(proposals, gt_boxes)
    best = []
    for p, g in zip(proposals, gt_boxes, strict=True):
        p = p[:max_proposals] if max_proposals is not None else p
        if len(g) == 0:
            continue
        best.append(box_iou(g.float(), p.float()).max(1).values if len(p) else torch.zeros(len(g)))
    return torch.cat(best) if best else torch.zeros(0)


def proposal_recall(
    proposals: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    max_proposals: int | None = None,
) -> dict[float, float]:
    """Share of ground-truth boxes covered by some proposal with IoU ``>= t``, for each threshold ``t``.

    Args:
        proposals: one ``Tensor[K_i, 4]`` per image, best first.
        gt_boxes: one ``Tensor[G_i, 4]`` per image.
        max_proposals: use only the first proposals of each image (recall as a function of the count).

    Returns ``{t: recall}``. R-CNN trains on proposals with IoU >= 0.5 as positives: recall at 0.5 bounds
    what the detector can find, recall at 0.7 how well the boxes fit before regression.
    """
    best = best_overlaps(proposals, gt_boxes, max_proposals)
    if len(best) == 0:
        raise ValueError("there are no ground-truth boxes: recall is undefined")
    return {float(t): float((best >= t).float().mean()) for t in iou_thresholds}
