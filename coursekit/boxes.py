"""Bounding boxes: formats, areas, IoU, non-maximum suppression and the R-CNN box encoding.

Taught in notebooks 02 (IoU), 03-05 (NMS, box deltas). Everything here is written from scratch and
returns exactly what ``torchvision.ops`` returns (``tests/test_boxes.py`` checks it).

Convention inside coursekit: float ``xyxy`` boxes in pixels, ``Tensor[N, 4]`` with ``x1 <= x2`` and
``y1 <= y2``. Other formats are converted at the edges with :func:`box_convert`:

- ``"xyxy"``:   (x1, y1, x2, y2), the top-left and bottom-right corners;
- ``"xywh"``:   (x1, y1, w, h), top-left corner plus size (COCO annotations);
- ``"cxcywh"``: (cx, cy, w, h), centre plus size (YOLO, DETR, the regression targets of notebook 02).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from coursekit.runtime import threads

__all__ = [
    "BoxFormat",
    "FORMATS",
    "BBOX_XFORM_CLIP",
    "box_convert",
    "box_area",
    "box_inter_union",
    "box_iou",
    "paired_box_iou",
    "generalized_box_iou",
    "nms",
    "batched_nms",
    "encode_boxes",
    "decode_boxes",
    "check_boxes",
]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
FORMATS: tuple[str, ...] = get_args(BoxFormat)

# torchvision clamps dw, dh before exp() so a wild prediction cannot produce an infinite box
# (decode_boxes here, YOLOv2's log-scale sizes in coursekit.detection).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def check_boxes(boxes: Tensor, name: str = "boxes", *, require_float: bool = True, xyxy: bool = True) -> None:
    """Raise ``ValueError`` naming the problem if ``boxes`` is not a valid ``Tensor[N, 4]``.

    Checks: a tensor, two dims with last dim 4, floating dtype (if ``require_float``), no NaN/inf, and
    for ``xyxy`` boxes ``x2 >= x1`` and ``y2 >= y1`` (a box given as xywh by mistake usually fails here).
    """
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [N, 4], got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {list(boxes.shape)}")
    if require_float and not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}; use boxes.float()")
    if boxes.is_floating_point() and not torch.isfinite(boxes).all():
        raise ValueError(f"{name} contains NaN or inf values")
    if xyxy and boxes.numel() and ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        bad = int(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).nonzero()[0])
        raise ValueError(
            f"{name}[{bad}] = {boxes[bad].tolist()} has x2 < x1 or y2 < y1; expected xyxy boxes "
            "(convert from xywh / cxcywh with coursekit.boxes.box_convert)"
        )


def _check_format(fmt: str, arg: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown box format {arg}={fmt!r}; choose one of {FORMATS}")


def box_convert(boxes: Tensor, in_fmt: BoxFormat, out_fmt: BoxFormat) -> Tensor:
    """Convert ``boxes`` (Tensor[..., 4]) between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    Goes through xyxy, like torchvision.ops.box_convert. Widths and heights must not be negative.
    """
    _check_format(in_fmt, "in_fmt")
    _check_format(out_fmt, "out_fmt")
    if not isinstance(boxes, Tensor) or boxes.shape[-1:] != (4,):
        shape = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a Tensor[..., 4], got {shape}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt != "xyxy" and boxes.numel() and ((c < 0) | (d < 0)).any():
        raise ValueError(f"boxes in {in_fmt!r} format have negative width or height")
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # now (a, b, c, d) = (x1, y1, x2, y2)
    if out_fmt == "xywh":
        return torch.stack((a, b, c - a, d - b), dim=-1)
    if out_fmt == "cxcywh":
        return torch.stack(((a + c) / 2, (b + d) / 2, c - a, d - b), dim=-1)
    return torch.stack((a, b, c, d), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of xyxy ``boxes`` (Tensor[N, 4]) -> Tensor[N]."""
    check_boxes(boxes, require_float=False)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _paired_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of matching pairs: xyxy ``Tensor[..., 4]`` x ``Tensor[..., 4]``
    (broadcast) -> ``(Tensor[...], Tensor[...])``. The one place box overlap is computed."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    u1, v1, u2, v2 = boxes2.unbind(-1)
    # One coordinate at a time; no overlap -> 0, not a negative area.
    w = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp_(min=0)
    h = (torch.minimum(y2, v2) - torch.maximum(y1, v1)).clamp_(min=0)
    inter = w * h
    return inter, (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter


def box_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of every pair: xyxy Tensor[N, 4] x Tensor[M, 4] -> (Tensor[N, M],
    Tensor[N, M]). Unchecked (the callers check): :func:`box_iou`, :func:`generalized_box_iou` and COCO's
    crowd rule (:mod:`coursekit.metrics.detection`) build on it, :func:`paired_box_iou` on the same
    pairwise overlap."""
    # boxes2 column-major: each coordinate of the M boxes is one contiguous row, so every (N, M) operation
    # reads memory in order. 2-3x faster than min/max over [N, M, 2] slices, and the IoU matrix is most
    # of NMS's time (issue 15). Same values, bit for bit.
    return _paired_inter_union(boxes1[:, None, :], boxes2.T.contiguous().T[None, :, :])  # (N, M), (N, M)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair: xyxy Tensor[N, 4] x Tensor[M, 4] -> Tensor[N, M].

    Two zero-area boxes have IoU 0/0 = NaN, exactly as in torchvision.
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    inter, union = box_inter_union(boxes1, boxes2)
    return inter / union


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matching pairs, not of every pair: xyxy ``Tensor[..., 4]`` x ``Tensor[..., 4]`` (broadcast)
    -> ``Tensor[...]``. Two zero-area boxes give 0 here (not NaN): this is used inside losses (YOLO's
    confidence target) and widgets, where an empty box must not poison the result.
    """
    if boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[..., 4], got {list(boxes1.shape)} and {list(boxes2.shape)}")
    inter, union = _paired_inter_union(boxes1, boxes2)
    return inter / union.clamp(min=1e-9)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU (Rezatofighi et al., 2019): IoU - (hull - union) / hull, in [-1, 1]. -> Tensor[N, M].

    Unlike IoU it still has a gradient when boxes do not overlap, which is why DETR-style losses use it.
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    inter, union = box_inter_union(boxes1, boxes2)
    iou = inter / union
    hull_tl = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    hull_br = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    hull_wh = (hull_br - hull_tl).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - (hull - union) / hull


def _check_scores(boxes: Tensor, scores: Tensor) -> None:
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a Tensor[N] with N = {boxes.shape[0]} (one per box), got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


def _greedy_keep(iou: Tensor, iou_threshold: float, alive: Tensor | None = None) -> Tensor:
    """Greedy NMS on an IoU matrix whose rows/columns are already sorted by decreasing score.

    Returns a bool mask of kept boxes. Greedy NMS keeps box j iff no *kept* box ranked above it overlaps
    it by more than the threshold. Instead of a Python loop over boxes we iterate that rule on the whole
    matrix (the fixed point of "Cluster-NMS", Zheng et al. 2021): start by letting every box suppress,
    then let only the boxes kept so far suppress, until nothing changes. The fixed point is exactly the
    greedy result, reached in a few matrix passes instead of N loop steps. ``alive`` (bool Tensor[N]):
    False for boxes already suppressed from outside; those are neither kept nor suppress anything.
    """
    n = iou.shape[0]
    # Only higher-ranked boxes (row i < column j) can suppress; NaN IoU (two empty boxes) never suppresses.
    upper = torch.ones(n, n, dtype=torch.bool, device=iou.device).triu(diagonal=1)
    above = (iou.nan_to_num(nan=-math.inf) > iou_threshold) & upper  # (N, N) bool: row i suppresses column j
    keep = torch.ones(n, dtype=torch.bool, device=iou.device) if alive is None else alive.clone()
    for _ in range(n):
        new_keep = ~(above & keep[:, None]).any(dim=0)
        if alive is not None:
            new_keep &= alive
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _below(threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number <= ``threshold``. For an IoU of that dtype, ``iou > _below(t)`` is exactly
    ``iou > t`` in real numbers, as torchvision compares (in double). ``iou > t`` in PyTorch rounds ``t`` to
    the nearest float32 first: 0.1 becomes 0.100000001, and an IoU of exactly float32(0.1) is then not above
    the threshold although torchvision suppresses it."""
    value = torch.tensor(threshold, dtype=dtype)
    if dtype in (torch.float32, torch.float64) and value.item() > threshold:
        value = torch.nextafter(value, torch.tensor(-math.inf, dtype=dtype))
    return value.item()


_NMS_BLOCK = 256  # boxes resolved together; bounds memory at O(N x block) instead of O(N^2)
_SWEEP_MAX_PAIRS = 1 << 22  # pairs the sweep holds at once (~100 MB); a denser pile of boxes goes by blocks


def _x_overlapping_pairs(boxes: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
    """The pairs of boxes (of the same class, if ``classes``) whose x-extents overlap, each once, or None
    when there are more than ``_SWEEP_MAX_PAIRS``. Returns ``(by_left, counts, cols)``: the boxes sorted by
    (class, left edge) (Tensor[N] indices into ``boxes``), how many later boxes each of them overlaps
    (Tensor[N]), and those boxes' positions in that order (Tensor[P], run after run).

    Sweep and prune: sorted by left edge, a box overlaps in x exactly the boxes after it whose left edge is
    left of its right edge, one contiguous run found by a binary search. Boxes apart in x do not intersect.
    The sort key is exact: each edge's rank among all edge values, plus the class times their count.
    """
    n = boxes.shape[0]
    values = torch.cat([boxes[:, 0], boxes[:, 2]])  # every left and right edge
    ranks = torch.unique(values, sorted=True, return_inverse=True)[1]  # equal values, equal ranks
    stride = 2 * n + 1
    group = classes.to(torch.int64) * stride if classes is not None else 0
    left_key, right_key = ranks[:n] + group, ranks[n:] + group
    left, by_left = torch.sort(left_key, stable=True)
    run_end = torch.searchsorted(left, right_key[by_left].contiguous(), side="left")  # first left edge >= my right
    counts = (run_end - torch.arange(1, n + 1, device=boxes.device)).clamp(min=0)
    total = int(counts.sum())
    if total > _SWEEP_MAX_PAIRS:
        return None
    # Position of each pair's second box: its first box's position + 1, 2, ... along the run.
    run_start = torch.cumsum(counts, 0) - counts
    offset = torch.arange(total, device=boxes.device) - run_start.repeat_interleave(counts)
    cols = torch.arange(1, n + 1, device=boxes.device).repeat_interleave(counts) + offset
    return by_left, counts, cols


def _nms_sweep(boxes: Tensor, iou_threshold: float, classes: Tensor | None = None) -> Tensor | None:
    """Greedy NMS of boxes sorted by decreasing score -> bool mask of the kept ones, or None (too many pairs).

    Only boxes that overlap can suppress each other (for a threshold >= 0), and on a detector's output most
    pairs do not: find the pairs that overlap in x (:func:`_x_overlapping_pairs`; of one class when
    ``classes`` is given: another class never suppresses), compute their IoU, keep
    the edges "higher-ranked box -> lower-ranked box, IoU > threshold", and resolve them with the fixed point
    of :func:`_greedy_keep` on that short list of edges. A few operations on the overlapping pairs instead
    of many on N x N: under load, the number of operations is what costs (issue 15).
    """
    found = _x_overlapping_pairs(boxes, classes)
    if found is None:
        return None
    by_left, counts, cols = found
    rows = torch.arange(boxes.shape[0], device=boxes.device).repeat_interleave(counts)
    # Coordinates in left-edge order, one contiguous row each. Of the pairs that overlap in x, keep those
    # that overlap in y too (two coordinates per pair), then compute the IoU of those only.
    coords = boxes.index_select(0, by_left).T.contiguous()  # (4, N)
    y1, y2 = coords[1].repeat_interleave(counts), coords[3].repeat_interleave(counts)
    y1_other, y2_other = coords[1].index_select(0, cols), coords[3].index_select(0, cols)
    both = ((y1 < y2_other) & (y1_other < y2)).nonzero().squeeze(1)
    rows, cols = rows.index_select(0, both), cols.index_select(0, both)
    inter, union = _paired_inter_union(coords.index_select(1, rows).T, coords.index_select(1, cols).T)
    over = (inter / union) > iou_threshold  # NaN (two empty boxes) compares False: never suppresses
    edges = over.nonzero().squeeze(1)
    a, b = by_left[rows[edges]], by_left[cols[edges]]  # back to score ranks: the lower index ranks higher
    src, dst = torch.minimum(a, b), torch.maximum(a, b)
    n = boxes.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(n):
        suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
        suppressed[dst[keep[src]]] = True
        if torch.equal(~suppressed, keep):
            break
        keep = ~suppressed
    return keep


def _nms_sorted(boxes: Tensor, iou_threshold: float, classes: Tensor | None = None) -> Tensor:
    """Greedy NMS of boxes sorted by decreasing score -> bool mask of the kept ones.

    By :func:`_nms_sweep` when it applies (a threshold >= 0: boxes apart never suppress; not too many
    overlapping pairs); otherwise as follows.

    Block by block, best first: resolve a block of ``_NMS_BLOCK`` boxes among themselves with
    :func:`_greedy_keep` (minus the ones earlier blocks already suppressed), then let the block's kept
    boxes suppress every later box at once. The result is greedy NMS exactly; the work is about
    (kept boxes x N) IoUs, as in torchvision's loop, but in a few large tensor operations.
    ``classes`` (int Tensor[N], optional): a box only suppresses boxes of its own class (batched NMS).
    """
    if iou_threshold >= 0:
        keep = _nms_sweep(boxes, iou_threshold, classes)
        if keep is not None:
            return keep
    n = boxes.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    for start in range(0, n, _NMS_BLOCK):
        end = min(start + _NMS_BLOCK, n)
        alive = ~suppressed[start:end]
        if not alive.any():
            continue
        inter, union = box_inter_union(boxes[start:end], boxes[start:end])
        iou = inter / union
        if classes is not None:  # another class never suppresses
            iou = iou.masked_fill(classes[start:end, None] != classes[None, start:end], -math.inf)
        keep[start:end] = _greedy_keep(iou, iou_threshold, alive)
        rest = end + (~suppressed[end:]).nonzero().flatten()  # later boxes still in play
        winners = keep[start:end].nonzero().flatten() + start
        if len(rest) and len(winners):
            inter, union = box_inter_union(boxes[winners], boxes[rest])
            # NaN IoU (two empty boxes) compares False: it never suppresses
            over = (inter / union) > iou_threshold
            if classes is not None:
                over &= classes[winners, None] == classes[None, rest]
            suppressed[rest] = over.any(dim=0)
    return keep


# NMS is a loop of small tensor operations: one CPU thread (restored after), or a busy CPU makes the
# threads wait for each other at every step (1k boxes: 775 ms on 2 threads, 8 ms on one; issue 15).
@threads(1)
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression: indices (int64 Tensor[K]) of the kept boxes, by decreasing score.

    Args:
        boxes (Tensor[N, 4]): xyxy float boxes.
        scores (Tensor[N]): one score per box.
        iou_threshold: a box is dropped when its IoU with a higher-scoring kept box is ``> iou_threshold``.

    Same indices in the same order as ``torchvision.ops.nms`` (ties in score keep their input order).
    Work and memory follow the pairs of boxes that overlap (see :func:`_nms_sorted`).
    """
    check_boxes(boxes)
    _check_scores(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[_nms_sorted(boxes[order], _below(iou_threshold, boxes.dtype))]


@threads(1)  # as nms
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category ``idxs`` (Tensor[N] int): boxes of different classes never
    suppress each other. Returns int64 Tensor[K] sorted by decreasing score, as ``torchvision.ops.batched_nms``.
    """
    check_boxes(boxes)
    _check_scores(boxes, scores)
    if not isinstance(idxs, Tensor) or idxs.shape != scores.shape or idxs.is_floating_point():
        raise ValueError(f"idxs must be an integer Tensor[N] with N = {boxes.shape[0]}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    # All classes in one pass, the IoU of two classes masked out: a loop over the classes would run NMS's
    # small operations once per class (issue 15: 4-5x torchvision under load with 5 classes).
    return order[_nms_sorted(boxes[order], _below(iou_threshold, boxes.dtype), idxs[order])]


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_boxes(
    reference_boxes: Tensor, proposals: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """R-CNN regression targets: how to move each proposal onto its ground-truth box. -> Tensor[N, 4].

    For a proposal P (centre px, py, size pw, ph) and its matched ground truth G:
    ``dx = wx (gx - px) / pw``, ``dy = wy (gy - py) / ph``, ``dw = ww log(gw / pw)``, ``dh = wh log(gh / ph)``.
    Offsets are relative to the proposal's size, so the same delta means the same thing for a small and a
    large box; log makes scaling symmetric. Same as torchvision's ``BoxCoder(weights).encode_single``.

    Args:
        reference_boxes (Tensor[N, 4]): ground-truth xyxy boxes, one per proposal.
        proposals (Tensor[N, 4]): xyxy proposals (anchors, selective-search boxes) with positive size.
    """
    check_boxes(reference_boxes, "reference_boxes")
    check_boxes(proposals, "proposals")
    if reference_boxes.shape != proposals.shape:
        raise ValueError(
            f"reference_boxes {list(reference_boxes.shape)} and proposals {list(proposals.shape)} must match"
        )
    wx, wy, ww, wh = weights
    px, py, pw, ph = _centre_size(proposals)
    gx, gy, gw, gh = _centre_size(reference_boxes)
    return torch.stack(
        (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)), dim=1
    )


def decode_boxes(
    rel_codes: Tensor,
    boxes: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = BBOX_XFORM_CLIP,
) -> Tensor:
    """Apply deltas (Tensor[N, 4]: dx, dy, dw, dh) to ``boxes`` (Tensor[N, 4] xyxy): the inverse of
    :func:`encode_boxes`. -> Tensor[N, 4] xyxy. ``dw``/``dh`` are clamped at ``clamp`` before ``exp`` so a
    wild prediction cannot make an infinite box. Same as torchvision's ``BoxCoder.decode_single``, except that
    ``boxes`` follow ``rel_codes`` to its device too: anchors made once on the CPU meet a GPU network's output.
    """
    check_boxes(boxes, "boxes")
    if not isinstance(rel_codes, Tensor) or rel_codes.shape != boxes.shape:
        raise ValueError(f"rel_codes must have the shape of boxes {list(boxes.shape)}")
    wx, wy, ww, wh = weights
    px, py, pw, ph = _centre_size(boxes.to(rel_codes))  # its dtype and device
    dx, dy = rel_codes[:, 0] / wx, rel_codes[:, 1] / wy
    dw, dh = (rel_codes[:, 2] / ww).clamp(max=clamp), (rel_codes[:, 3] / wh).clamp(max=clamp)
    cx, cy = dx * pw + px, dy * ph + py
    w, h = torch.exp(dw) * pw, torch.exp(dh) * ph
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=1)
