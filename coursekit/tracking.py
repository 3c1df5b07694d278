"""Single-object tracking: SiamFC (Bertinetto et al., 2016) and a template-matching baseline.

Deck 003: "apply one branch of the siamese net convolutionally"; "real-time, online". Given the target's
box in the first frame, SiamFC crops an **exemplar** around it once, and in every later frame crops a
**search region** (twice as large) around the last position, at a few **scales**. The network embeds
both; the exemplar's features slide over the search features as a convolution filter (cross-correlation,
:func:`coursekit.models.siamese.xcorr`): the **score map** peaks where the target is. The peak, after a
cosine window that penalises large jumps, gives the displacement; the best scale, damped, the new size.

Training needs no labels beyond the boxes: pairs of frames of one clip, the exemplar from one, the search
region from the other, and a score map whose positives are the cells within ``radius`` of the target
(:class:`SiamFCPairs`, :func:`siamfc_loss`). The classical baseline, :class:`TemplateTracker`, matches the
first frame's grey patch by normalised cross-correlation (``skimage.feature.match_template``).
Notebook 10; metrics in :mod:`coursekit.metrics.tracking`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "context_side",
    "crop",
    "score_labels",
    "siamfc_loss",
    "SiamFCPairs",
    "siamfc_step",
    "SiamFCTracker",
    "TemplateTracker",
    "TrackResult",
    "track",
    "track_clips",
]

CONTEXT = 0.5  # context margin p = CONTEXT * (w + h) / 2 added to each side length (the paper adds 2p)


def _as_float(frames: Tensor) -> Tensor:
    return frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()


def context_side(box: Tensor) -> Tensor:
    """The exemplar's side in frame pixels: ``sqrt((w + p)(h + p))``, ``p = (w + h) / 4``.

    box (Tensor[..., 4] xyxy) -> Tensor[...]. The crop keeps the box plus a margin of context: half the
    paper's (SiamFC: ``sqrt((w + 2p)(h + 2p))``), since our targets are small and look-alikes pass close by.
    """
    w, h = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    p = CONTEXT * (w + h) / 2
    return ((w + p) * (h + p)).sqrt()


def crop(frames: Tensor, centres: Tensor, sides: Tensor, out_size: int) -> Tensor:
    """Square crops resized to ``out_size`` (bilinear, borders replicated), one per row.

    Args:
        frames (Tensor[B, 3, H, W] float in [0, 1] or uint8; or Tensor[1, 3, H, W] for all rows).
        centres (Tensor[B, 2]): (x, y) crop centres in pixels (continuous, pixel (r, c) covers [c, c + 1)).
        sides (Tensor[B]): crop sides in pixels.

    Returns:
        Tensor[B, 3, out_size, out_size] float.
    """
    frames = _as_float(frames)
    B = len(centres)
    if frames.dim() != 4 or frames.shape[0] not in (1, B):
        raise ValueError(f"frames must be [B, 3, H, W] or [1, 3, H, W] for {B} crops, got {tuple(frames.shape)}")
    H, W = frames.shape[-2:]
    steps = (torch.arange(out_size, dtype=torch.float32, device=centres.device) + 0.5) / out_size - 0.5  # (S,)
    xs = centres[:, 0:1] + steps[None] * sides[:, None]  # (B, S) pixel x of each output column
    ys = centres[:, 1:2] + steps[None] * sides[:, None]
    gx = (2 * xs / W - 1)[:, None, :].expand(-1, out_size, -1)  # (B, S, S)
    gy = (2 * ys / H - 1)[:, :, None].expand(-1, -1, out_size)
    grid = torch.stack([gx, gy], -1).to(frames.dtype)
    return F.grid_sample(frames.expand(B, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def score_labels(offsets: Tensor, score_size: int, stride: int, radius: float) -> Tensor:
    """Score-map targets: 1 for the cells within ``radius`` search pixels of the target, 0 elsewhere.

    offsets (Tensor[B, 2]): the target's (x, y) position relative to the search crop's centre, in search
    pixels. Cell (i, j) looks at offset ``((j - c) stride, (i - c) stride)``, ``c = (score_size - 1) / 2``.
    -> Tensor[B, 1, score_size, score_size] float.
    """
    c = (score_size - 1) / 2
    cells = (torch.arange(score_size, dtype=torch.float32) - c) * stride
    dx = cells[None, None, :] - offsets[:, 0, None, None]
    dy = cells[None, :, None] - offsets[:, 1, None, None]
    return ((dx**2 + dy**2).sqrt() <= radius).float()[:, None]


def siamfc_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """SiamFC's logistic loss, positives and negatives weighted to count half each (the paper's balance).

    logits, labels (Tensor[B, 1, h, w]) -> scalar.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have one shape")
    pos = labels.sum().clamp(min=1)
    neg = (1 - labels).sum().clamp(min=1)
    weights = labels * 0.5 / pos + (1 - labels) * 0.5 / neg
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum")


class SiamFCPairs:
    """Training batches of (exemplar, search region, score labels) from clips with boxes; an iterable
    for :class:`coursekit.train.Trainer`.

    For each pair: a clip, a frame ``i`` and a frame ``j`` at most ``max_gap`` apart; the exemplar is
    ``i``'s context crop (:func:`context_side`) resized to ``exemplar_size``; the search crop is ``j``'s
    context crop times ``search_size / exemplar_size``, with its centre shifted off the target by up to
    ``max_shift`` search pixels (else the net learns "always the centre") and its side jittered by
    ``scale_jitter``. Positives: cells within ``radius`` search pixels of the target (paper: 16 px at
    stride 8, i.e. 2 cells; ours 8 px at stride 4).
    """

    def __init__(self, clips: Sequence[dict[str, Tensor]], batch_size: int = 32, batches: int = 100,
                 exemplar_size: int = 39, search_size: int = 79, score_size: int = 11, stride: int = 4,
                 max_gap: int = 20, max_shift: float = 12.0, radius: float = 8.0, scale_jitter: float = 0.05,
                 generator: torch.Generator | None = None) -> None:
        if not clips:
            raise ValueError("SiamFCPairs needs at least one clip")
        self.clips, self.batch_size, self.batches = clips, batch_size, batches
        self.exemplar_size, self.search_size = exemplar_size, search_size
        self.score_size, self.stride = score_size, stride
        self.max_gap, self.max_shift, self.radius, self.scale_jitter = max_gap, max_shift, radius, scale_jitter
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.batches

    def sample(self) -> tuple[Tensor, Tensor, Tensor]:
        """One batch: exemplars Tensor[B, 3, e, e], search regions Tensor[B, 3, s, s], labels Tensor[B, 1, h, h]."""
        g, B = self.generator, self.batch_size
        zs, xs, offsets = [], [], []
        ratio = self.search_size / self.exemplar_size
        for _ in range(B):
            clip = self.clips[int(torch.randint(len(self.clips), (1,), generator=g))]
            T = len(clip["boxes"])
            i = int(torch.randint(T, (1,), generator=g))
            lo, hi = max(0, i - self.max_gap), min(T - 1, i + self.max_gap)
            j = int(torch.randint(lo, hi + 1, (1,), generator=g))
            box_i, box_j = clip["boxes"][i], clip["boxes"][j]
            zs.append(crop(clip["frames"][i : i + 1], (box_i[:2] + box_i[2:])[None] / 2, context_side(box_i)[None],
                           self.exemplar_size))
            side = context_side(box_j) * ratio * (1 + self.scale_jitter * (2 * torch.rand(1, generator=g) - 1))
            shift = (2 * torch.rand(2, generator=g) - 1) * self.max_shift  # search pixels
            centre = (box_j[:2] + box_j[2:]) / 2 + shift * side / self.search_size
            xs.append(crop(clip["frames"][j : j + 1], centre[None], side, self.search_size))
            offsets.append(-shift)
        labels = score_labels(torch.stack(offsets), self.score_size, self.stride, self.radius)
        return torch.cat(zs), torch.cat(xs), labels

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for _ in range(self.batches):
            yield self.sample()


def siamfc_step(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
    """Training step for :class:`coursekit.train.Trainer` on :class:`SiamFCPairs` batches."""
    z, x, labels = (t.to(device) for t in batch)
    logits = model(z, x)  # (B, 1, h, w)
    loss = siamfc_loss(logits, labels)
    # centre error of the peak, in cells: how well the batch is localised
    B, _, h, w = logits.shape
    peak, truth = logits.flatten(1).argmax(1), (labels * 1.0).flatten(1).argmax(1)
    err = ((peak // w - truth // w) ** 2 + (peak % w - truth % w) ** 2).float().sqrt().mean()
    return {"loss": loss, "peak_err": err}


class Tracker(Protocol):
    def init(self, frame: Tensor, box: Tensor) -> None: ...

    def update(self, frame: Tensor) -> Tensor: ...


class SiamFCTracker:
    """SiamFC inference: exemplar features computed once, then per frame a multi-scale search.

    Args:
        model: a :class:`coursekit.models.siamese.SiamFC` (``embed``, ``score``, ``exemplar_size``,
            ``search_size``, ``stride``).
        scale_step: the search scales are ``scale_step ** k`` for ``k`` in ``-(n//2) .. n//2``
            (paper: 3 scales, 1.0375). num_scales: odd.
        scale_penalty: multiplies the peak of the scales other than 1 (paper 0.9745): change size only
            when clearly better.
        scale_lr: damping of the size update (paper 0.59). window_influence: weight of the cosine
            (Hann) window added to the normalised score map (paper 0.176). upsample: bicubic
            upsampling factor of the score map (paper 16).

    After :meth:`update`, ``last_score`` holds the chosen scale's upsampled score map (numpy).
    """

    def __init__(self, model: nn.Module, num_scales: int = 3, scale_step: float = 1.0375,
                 scale_penalty: float = 0.9745, scale_lr: float = 0.59, window_influence: float = 0.176,
                 upsample: int = 8, device: torch.device | str = "cpu") -> None:
        if num_scales < 1 or num_scales % 2 == 0:
            raise ValueError(f"num_scales must be odd (a scale of 1 in the middle), got {num_scales}")
        self.model = model.eval()
        self.device = torch.device(device)
        self.scales = torch.tensor([scale_step ** k for k in range(-(num_scales // 2), num_scales // 2 + 1)])
        self.penalty = torch.full((num_scales,), scale_penalty)
        self.penalty[num_scales // 2] = 1.0
        self.scale_lr, self.window_influence, self.upsample = scale_lr, window_influence, upsample
        self.last_score: np.ndarray | None = None

    @torch.no_grad()
    def init(self, frame: Tensor, box: Tensor) -> None:
        """frame (Tensor[3, H, W]); box (Tensor[4] xyxy): the target in this frame."""
        box = box.float()
        self.centre = (box[:2] + box[2:]) / 2
        self.size = box[2:] - box[:2]  # (w, h)
        self.z_side = context_side(box)
        m = self.model
        z = crop(frame[None], self.centre[None], self.z_side[None], m.exemplar_size)
        self.z_feat = m.embed(z.to(self.device))
        score_size = (m.search_size - m.exemplar_size) // m.stride + 1
        up = (score_size - 1) * self.upsample + 1
        hann = torch.hann_window(up + 2, periodic=False)[1:-1]
        self.window = (hann[:, None] * hann[None, :]) / (hann.sum() ** 2)

    @torch.no_grad()
    def update(self, frame: Tensor) -> Tensor:
        """frame (Tensor[3, H, W]) -> the target's box (Tensor[4] xyxy) in it."""
        m, n = self.model, len(self.scales)
        x_side = self.z_side * m.search_size / m.exemplar_size
        sides = x_side * self.scales  # (n,)
        x = crop(frame[None], self.centre.expand(n, 2), sides, m.search_size)
        scores = m.score(self.z_feat, m.embed(x.to(self.device))).cpu()  # (n, 1, h, w)
        h = scores.shape[-1]
        up = F.interpolate(scores, size=((h - 1) * self.upsample + 1,) * 2, mode="bicubic", align_corners=True)
        up = up[:, 0]  # (n, U, U)
        best = int((up.flatten(1).amax(1) * self.penalty).argmax())
        r = up[best] - up[best].min()
        r = r / r.sum().clamp(min=1e-12)
        r = (1 - self.window_influence) * r + self.window_influence * self.window
        U = r.shape[-1]
        peak = int(r.argmax())
        disp_cells = torch.tensor([peak % U, peak // U], dtype=torch.float32) - (U - 1) / 2  # (x, y), upsampled cells
        disp_search = disp_cells / self.upsample * m.stride  # search-crop pixels
        self.centre = self.centre + disp_search * sides[best] / m.search_size  # frame pixels
        scale = 1 - self.scale_lr + self.scale_lr * self.scales[best]
        self.size, self.z_side = self.size * scale, self.z_side * scale
        H, W = frame.shape[-2:]
        self.centre = self.centre.clamp(torch.zeros(2), torch.tensor([float(W), float(H)]))
        self.last_score = r.numpy()
        return torch.cat([self.centre - self.size / 2, self.centre + self.size / 2])


class TemplateTracker:
    """The classical baseline: the first frame's grey patch, found again in each frame by normalised
    cross-correlation (``skimage.feature.match_template``) inside a window of ``search_factor`` times the
    box around the last position. No learning, no scale change: the box keeps its first size.
    """

    def __init__(self, search_factor: float = 2.0) -> None:
        if search_factor < 1:
            raise ValueError(f"search_factor must be >= 1 (the window holds the template), got {search_factor}")
        self.search_factor = search_factor
        self.last_score: np.ndarray | None = None

    @staticmethod
    def _grey(frame: Tensor) -> np.ndarray:
        return _as_float(frame).mean(0).numpy()

    def init(self, frame: Tensor, box: Tensor) -> None:
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        self.template = self._grey(frame)[y1:y2, x1:x2]
        self.size = torch.tensor([float(x2 - x1), float(y2 - y1)])
        self.centre = (box[:2].float() + box[2:].float()) / 2

    def update(self, frame: Tensor) -> Tensor:
        from skimage.feature import match_template

        grey = self._grey(frame)
        H, W = grey.shape
        th, tw = self.template.shape
        half = self.search_factor * self.size / 2
        x0 = int(np.clip(round(float(self.centre[0] - half[0])), 0, W - tw))
        y0 = int(np.clip(round(float(self.centre[1] - half[1])), 0, H - th))
        x1 = int(np.clip(round(float(self.centre[0] + half[0])), x0 + tw, W))
        y1 = int(np.clip(round(float(self.centre[1] + half[1])), y0 + th, H))
        response = match_template(grey[y0:y1, x0:x1], self.template)  # (h - th + 1, w - tw + 1)
        dy, dx = np.unravel_index(int(np.argmax(response)), response.shape)
        self.last_score = response
        top_left = torch.tensor([x0 + dx, y0 + dy], dtype=torch.float32)
        self.centre = top_left + self.size / 2
        return torch.cat([top_left, top_left + self.size])


@dataclass
class TrackResult:
    """Boxes predicted over clips (``Tensor[T, 4]`` each, frame 0 = the given box) and the speed."""

    boxes: list[Tensor]
    scores: list[list[np.ndarray]]  # per clip, per frame from 1 on: the tracker's score map
    seconds: float  # wall-clock time spent in update(), all clips
    frames: int  # frames tracked (frame 0 of each clip excluded)
    cpu_seconds: float = 0.0  # CPU time of this process in update(): on a machine shared with other jobs
    # it is what the wall clock would read on an idle one (single-threaded work)

    @property
    def fps(self) -> float:
        """Frames per wall-clock second."""
        return self.frames / max(self.seconds, 1e-12)

    @property
    def cpu_fps(self) -> float:
        """Frames per second of CPU time (process time)."""
        return self.frames / max(self.cpu_seconds, 1e-12)


def track(tracker: Tracker, frames: Tensor, init_box: Tensor, keep_scores: bool = False) -> TrackResult:
    """Run ``tracker`` over one clip: ``init`` on frame 0 with ``init_box``, ``update`` on every later frame.

    frames (Tensor[T, 3, H, W]); init_box (Tensor[4] xyxy). Online: frame t is seen only after t - 1.
    """
    if frames.dim() != 4 or len(frames) < 2:
        raise ValueError(f"frames must be Tensor[T, 3, H, W] with T >= 2, got {tuple(frames.shape)}")
    tracker.init(frames[0], init_box)
    boxes, scores, spent, cpu = [init_box.float()], [], 0.0, 0.0
    for t in range(1, len(frames)):
        start, start_cpu = time.perf_counter(), time.process_time()
        boxes.append(tracker.update(frames[t]))
        spent += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        if keep_scores:
            scores.append(np.asarray(tracker.last_score).copy())
    return TrackResult([torch.stack(boxes)], [scores], spent, len(frames) - 1, cpu)


def track_clips(make_tracker: Callable[[], Tracker], clips: Sequence[dict[str, Tensor]],
                keep_scores: bool = False, progress: bool = False, desc: str = "tracking") -> TrackResult:
    """:func:`track` over every clip, a fresh tracker each; boxes and scores per clip, total time and frames."""
    from tqdm.auto import tqdm

    out = TrackResult([], [], 0.0, 0)
    for clip in tqdm(clips, desc=desc, disable=not progress):
        r = track(make_tracker(), clip["frames"], clip["boxes"][0], keep_scores)
        out.boxes += r.boxes
        out.scores += r.scores
        out.seconds += r.seconds
        out.frames += r.frames
        out.cpu_seconds += r.cpu_seconds
    return out

