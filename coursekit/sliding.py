"""Sliding windows: where the windows go, the crops, the score map, and merging windows into detections.

Taught in notebook ``03_sliding_windows_overfeat`` (decks 001 and 002). A window classifier (+ box
regressor) is run at every position of a grid over the image, at several scales; each position gives
class scores and a box, and non-maximum suppression merges the overlapping boxes into detections.

Window arithmetic, per axis: ``n = (size + 2 * padding - window) // stride + 1`` positions.

- Deck 001 (OverFeat): image 257, net input 221, stride 36 (OverFeat's total subsampling) -> 2 x 2
  (stride 32 also gives 2 x 2, leaving 4 pixels unvisited).
- Deck 002: image 256, window 64, stride 8 -> 25 x 25 = 625 windows without padding; the deck's
  32 x 32 = 1024 needs ``padding=28`` (56 more pixels: 256 + 56 - 64 = 248 = 31 * 8).

Boxes are float ``xyxy`` in pixels of the ORIGINAL image (unpadded, unscaled), like everywhere in
coursekit. A scale ``s`` means the image was resized to ``round(H * s) x round(W * s)`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from coursekit.boxes import batched_nms, box_iou
from coursekit.checks import as_pair
from coursekit.runtime import threads

__all__ = [
    "window_grid",
    "window_boxes",
    "extract_windows",
    "sliding_window_scores",
    "image_pyramid",
    "encode_window_boxes",
    "decode_window_boxes",
    "assign_windows",
    "detections_from_maps",
    "merge_detections",
]

Size = int | tuple[int, int]
Detections = dict[str, Tensor]  # {"boxes": Tensor[N, 4] xyxy, "scores": Tensor[N], "labels": Tensor[N] int64}
_SMALL_BATCH = 64  # fewer crops than this per forward pass: sliding_window_scores runs them on one CPU thread
IGNORE = -1  # assign_windows' label for windows that are neither clearly object nor clearly background


def window_grid(image_size: Size, window: Size, stride: Size, padding: Size = 0) -> tuple[int, int]:
    """How many window positions fit, ``(rows, cols)``: ``(size + 2 * padding - window) // stride + 1``.

    Args:
        image_size: ``H`` or ``(H, W)`` of the image the windows slide over.
        window: the net's input size ``k`` or ``(kh, kw)``.
        stride: pixels between two neighbouring windows.
        padding: pixels added on each side of the image before sliding.

    ``window_grid(257, 221, 36) == (2, 2)`` (deck 001); ``window_grid(256, 64, 8) == (25, 25)`` and
    ``window_grid(256, 64, 8, padding=28) == (32, 32)`` (deck 002).
    """
    (h, w), (kh, kw) = as_pair(image_size, "image_size"), as_pair(window, "window")
    (sh, sw), (ph, pw) = as_pair(stride, "stride"), as_pair(padding, "padding", minimum=0)
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(
            f"window {(kh, kw)} does not fit in the padded image {(h + 2 * ph, w + 2 * pw)}: "
            "use a smaller window, more padding or a larger scale"
        )
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def window_boxes(
    image_size: Size, window: Size, stride: Size, padding: Size = 0, scale: float | tuple[float, float] = 1.0
) -> Tensor:
    """The xyxy box of every window, in pixels of the original image. -> Tensor[rows, cols, 4] float32.

    ``image_size`` is the size the windows slide over (the padded image is never materialised:
    windows that reach into the padding get coordinates below 0 or beyond the border). ``scale``
    is the factor the original image was resized by (``(sy, sx)`` for each axis), undone here so
    boxes from every level of a pyramid land in the same coordinates.
    """
    rows, cols = window_grid(image_size, window, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = (
        as_pair(window, "window"),
        as_pair(stride, "stride"),
        as_pair(padding, "padding", 0),
    )
    sy, sx = (scale, scale) if isinstance(scale, (int, float)) else scale
    if sy <= 0 or sx <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    y1 = torch.arange(rows, dtype=torch.float32) * sh - ph  # (rows,)
    x1 = torch.arange(cols, dtype=torch.float32) * sw - pw  # (cols,)
    yy, xx = torch.meshgrid(y1, x1, indexing="ij")  # (rows, cols) each
    boxes = torch.stack((xx, yy, xx + kw, yy + kh), dim=-1)  # (rows, cols, 4) in the scaled image
    return boxes / torch.tensor([sx, sy, sx, sy])


def extract_windows(image: Tensor, window: Size, stride: Size, padding: Size = 0) -> Tensor:
    """Every window's crop, without copying pixels twice. -> Tensor[rows, cols, C, kh, kw].

    Args:
        image (Tensor[C, H, W]): the image (zero-padded by ``padding`` on each side first).

    ``crops[i, j] == padded[:, i * sh : i * sh + kh, j * sw : j * sw + kw]``.
    """
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"image must be a Tensor[C, H, W], got {getattr(image, 'shape', type(image))}")
    _, h, w = image.shape
    window_grid((h, w), window, stride, padding)  # validates the sizes
    (kh, kw), (sh, sw), (ph, pw) = (
        as_pair(window, "window"),
        as_pair(stride, "stride"),
        as_pair(padding, "padding", 0),
    )
    padded = F.pad(image, (pw, pw, ph, ph))
    # unfold(dim, size, step) adds a trailing axis of length `size`: (C, rows, cols, kh, kw)
    crops = padded.unfold(1, kh, sh).unfold(2, kw, sw)
    return crops.permute(1, 2, 0, 3, 4)


def sliding_window_scores(
    model: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
    image: Tensor,
    window: Size,
    stride: Size,
    padding: Size = 0,
    batch_size: int = 1,
    progress: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """The loop of deck 002: run ``model`` on every window's crop and assemble its score map(s).

    Args:
        model: takes crops ``Tensor[B, C, kh, kw]`` and returns ``Tensor[B, K]`` or a tuple of them
            (e.g. class logits and box offsets); called under ``torch.no_grad``.
        image (Tensor[C, H, W]): on the model's device.
        batch_size: crops per forward pass; 1 is the deck's "one full inference per window".

    Returns ``Tensor[K, rows, cols]`` (or a tuple of them, matching the model's output): entry
    ``[:, i, j]`` is the model's output on window ``(i, j)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    crops = extract_windows(image, window, stride, padding)
    rows, cols = crops.shape[:2]
    flat = crops.reshape(rows * cols, *crops.shape[2:])  # (N, C, kh, kw)
    outputs: list[tuple[Tensor, ...]] = []
    # One window per pass is many small operations: on a CPU, several threads per operation wait for
    # each other, and when another program keeps a core busy each pass waits for a time slice (1,024
    # passes: 118 s instead of 1.5 s measured on a loaded 2-core machine). One thread, restored after.
    small_ops = image.device.type == "cpu" and batch_size < _SMALL_BATCH
    with torch.no_grad(), threads(1 if small_ops else None):
        for start in tqdm(range(0, len(flat), batch_size), disable=not progress, desc="windows"):
            out = model(flat[start : start + batch_size])
            outputs.append(out if isinstance(out, tuple) else (out,))
    maps = tuple(
        torch.cat(parts).reshape(rows, cols, -1).permute(2, 0, 1) for parts in zip(*outputs, strict=True)
    )  # each (K, rows, cols)
    return maps if isinstance(out, tuple) else maps[0]


def image_pyramid(image: Tensor, scales: Sequence[float], min_size: Size = 1) -> list[tuple[float, Tensor]]:
    """The image resized by each scale (bilinear, antialiased), smallest levels that cannot hold a
    ``min_size`` window left out. -> list of ``(scale, Tensor[C, round(H * s), round(W * s)])``.

    Objects of size ``o`` pixels fill a window of ``k`` pixels at scale ``k / o``: a pyramid lets one
    fixed-size window classifier find objects of many sizes (deck 001, "multiple scales").
    """
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"image must be a Tensor[C, H, W], got {getattr(image, 'shape', type(image))}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive factors, got {scales!r}")
    kh, kw = as_pair(min_size, "min_size")
    _, h, w = image.shape
    levels = []
    for s in scales:
        size = (round(h * s), round(w * s))
        if size[0] < kh or size[1] < kw:
            continue
        resized = (
            image
            if size == (h, w)
            else F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[
                0
            ]
        )
        levels.append((float(s), resized))
    return levels


def encode_window_boxes(windows: Tensor, boxes: Tensor) -> Tensor:
    """Regression targets: each box in its window's own coordinates (0 = left/top edge, 1 = right/bottom).

    Args:
        windows (Tensor[N, 4]): xyxy windows. boxes (Tensor[N, 4]): xyxy boxes, one per window.

    Returns Tensor[N, 4] ``((x1 - wx1) / ww, (y1 - wy1) / wh, (x2 - wx1) / ww, (y2 - wy1) / wh)``:
    the same numbers whatever the scale, which is what lets one regressor serve every pyramid level.
    """
    if windows.shape != boxes.shape or windows.dim() != 2 or windows.shape[-1] != 4:
        raise ValueError(
            f"windows and boxes must both be Tensor[N, 4], got {list(windows.shape)}, {list(boxes.shape)}"
        )
    origin = windows[:, [0, 1, 0, 1]]
    size = (windows[:, 2:] - windows[:, :2]).repeat(1, 2)  # (N, 4): w, h, w, h
    return (boxes - origin) / size


def decode_window_boxes(windows: Tensor, offsets: Tensor) -> Tensor:
    """The inverse of :func:`encode_window_boxes`: window-relative boxes back to pixels. -> Tensor[N, 4].

    Corners are sorted (``x1 <= x2``, ``y1 <= y2``), so any regressor output gives a valid box.
    """
    if windows.shape != offsets.shape or windows.dim() != 2 or windows.shape[-1] != 4:
        raise ValueError(
            f"windows and offsets must both be Tensor[N, 4], got {list(windows.shape)}, {list(offsets.shape)}"
        )
    origin = windows[:, [0, 1, 0, 1]]
    size = (windows[:, 2:] - windows[:, :2]).repeat(1, 2)
    boxes = origin + offsets * size  # (N, 4)
    # An untrained regressor may swap the corners: sort them so the result is always a valid xyxy box.
    x1, x2 = torch.minimum(boxes[:, 0], boxes[:, 2]), torch.maximum(boxes[:, 0], boxes[:, 2])
    y1, y2 = torch.minimum(boxes[:, 1], boxes[:, 3]), torch.maximum(boxes[:, 1], boxes[:, 3])
    return torch.stack((x1, y1, x2, y2), dim=1)


def assign_windows(
    windows: Tensor, gt_boxes: Tensor, gt_labels: Tensor, pos_iou: float = 0.5, neg_iou: float = 0.3
) -> tuple[Tensor, Tensor]:
    """Training labels for windows: the class of the best-overlapping object, background, or ignore.

    Args:
        windows (Tensor[N, 4]): xyxy windows. gt_boxes (Tensor[M, 4]), gt_labels (Tensor[M] int64, >= 1).
        pos_iou: IoU from which a window is a positive of its best object's class.
        neg_iou: IoU below which a window is background (label 0); in between: ``IGNORE`` (-1).

    Returns ``labels`` (Tensor[N] int64) and ``targets`` (Tensor[N, 4]: the best object's box in
    window coordinates, :func:`encode_window_boxes`; meaningful for positives only).
    """
    if not 0 <= neg_iou <= pos_iou <= 1:
        raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got neg_iou={neg_iou}, pos_iou={pos_iou}")
    n = windows.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.zeros(n, dtype=torch.int64), torch.zeros(n, 4)
    best_iou, best = box_iou(windows, gt_boxes).max(dim=1)  # (N,), (N,)
    labels = torch.full((n,), IGNORE, dtype=torch.int64)
    labels[best_iou < neg_iou] = 0
    positive = best_iou >= pos_iou
    labels[positive] = gt_labels[best][positive].long()
    return labels, encode_window_boxes(windows, gt_boxes[best])


def detections_from_maps(
    probs: Tensor,
    windows: Tensor,
    offsets: Tensor | None = None,
    score_threshold: float = 0.5,
    background: int | None = 0,
) -> Detections:
    """One detection per window whose best object class scores above ``score_threshold``.

    Args:
        probs (Tensor[K, rows, cols]): class probabilities per window (softmax over K classes).
        windows (Tensor[rows, cols, 4]): the windows' xyxy boxes in the original image (:func:`window_boxes`).
        offsets (Tensor[4, rows, cols] | None): the regressor's window-relative boxes; None keeps the
            window itself as the box (a classifier alone can only answer "which window").
        background: the class index that is not an object (left out of the argmax); None: none.

    Returns ``{"boxes": Tensor[N, 4], "scores": Tensor[N], "labels": Tensor[N] int64}``: the
    torchmetrics / coursekit.metrics format, before any merging.
    """
    k, rows, cols = probs.shape
    if windows.shape != (rows, cols, 4):
        raise ValueError(
            f"windows must be Tensor[{rows}, {cols}, 4] to match probs, got {list(windows.shape)}"
        )
    if offsets is not None and offsets.shape != (4, rows, cols):
        raise ValueError(f"offsets must be Tensor[4, {rows}, {cols}], got {list(offsets.shape)}")
    flat = probs.reshape(k, -1).T  # (rows * cols, K)
    if background is not None:
        flat = flat.clone()
        flat[:, background] = -1.0  # never the argmax
    scores, labels = flat.max(dim=1)  # (N,), (N,)
    boxes = windows.reshape(-1, 4).to(probs)
    if offsets is not None:
        boxes = decode_window_boxes(boxes, offsets.reshape(4, -1).T)
    keep = scores > score_threshold
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def merge_detections(
    detections: Sequence[Detections],
    iou_threshold: float = 0.3,
    max_detections: int = 100,
    pre_nms_top_n: int = 1000,
) -> Detections:
    """Pool the detections of every scale (and window) and merge them with per-class NMS.

    Args:
        detections: one dict per pyramid level (:func:`detections_from_maps`), boxes already in
            original-image pixels.
        iou_threshold: boxes of one class overlapping a better one by more than this are dropped.
        max_detections: keep at most this many, best first.
        pre_nms_top_n: only this many best candidates enter NMS (NMS costs O(N^2) memory and
            time; a low score threshold on an untrained net can leave tens of thousands).

    Returns one dict in the same format, sorted by decreasing score. OverFeat merged boxes by
    averaging overlapping ones; NMS (keep the best, drop its overlaps) is what later detectors use.
    """
    if not detections:
        raise ValueError("detections is empty: pass one dict per scale (an empty dict list has no device)")
    boxes = torch.cat([d["boxes"] for d in detections])
    scores = torch.cat([d["scores"] for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    if len(scores) > pre_nms_top_n:
        top = scores.topk(pre_nms_top_n).indices  # sorted, best first
        boxes, scores, labels = boxes[top], scores[top], labels[top]
    keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
