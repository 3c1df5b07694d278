"""``Clips``: short videos of one target glyph moving among look-alike distractors, with a box per frame.

The tracking data of notebook 10 (SiamFC against template matching, the OTB protocol). In every clip:

- the **target**, one glyph identity (:mod:`coursekit.data.identities`) in one ink colour, moves on a
  smooth random path, bouncing off the borders, and grows or shrinks steadily (**scale change**, up to
  x1.6 either way over the clip) while turning slowly;
- **distractors**: other glyphs of the same kind moving too, half of them in the target's own colour,
  which may cross its path;
- an **occluder**, a plain bar that slides across the target's path around the middle of the clip
  (**partial or full occlusion** for a few frames);
- a fixed background (smooth noise or a real texture).

Item ``i`` is a pure function of ``(seed, split, i)``: ``{"frames": float32 Tensor[T, 3, H, W] in
[0, 1], "boxes": float32 Tensor[T, 4] xyxy (the tight box of the target's ink, occluded or not),
"visible": float32 Tensor[T] (share of the target's ink not under the occluder)}``. The two splits
draw their glyphs from disjoint identity ranges.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from coursekit.data._render import PIXEL_NOISE, background, check_count, random_colour
from coursekit.data.identities import glyph_strokes, render_glyphs

__all__ = ["Clips"]

Split = Literal["train", "test"]
_SPLITS: tuple[str, ...] = get_args(Split)
_GLYPH_OFFSET = {"train": 2_000_000, "test": 3_000_000}  # disjoint from Identities' glyphs, and from each other
_SIZE_RANGE = (0.18, 0.32)  # target's starting side, fraction of the frame side
_GROWTH_RANGE = (0.6, 1.6)  # its size at the last frame over its size at the first
_SPEED_RANGE = (0.008, 0.02)  # fraction of the side per frame
_TURN_DEG = 15.0  # total rotation over a clip, at most
_INK_THRESHOLD = 0.5  # ink at or above which a pixel belongs to the box
_OCCLUDER_FRAMES = 0.6  # the bar takes this share of the clip to cross the frame


class Clips(Dataset):
    """``n`` tracking clips of ``n_frames`` frames, ``image_size`` pixels square; see the module docstring.

    Args:
        n: number of clips. n_frames: frames per clip (>= 2). image_size: frame side in pixels (>= 32).
        distractors: look-alike glyphs per clip. occlusion: add the occluding bar.
        split: ``"train"`` or ``"test"`` (disjoint glyphs). seed: fixes everything else.
    """

    def __init__(self, n: int = 20, n_frames: int = 60, image_size: int = 96, distractors: int = 2,
                 occlusion: bool = True, split: Split = "train", seed: int = 0) -> None:
        self.n = check_count("n", n)
        self.n_frames = check_count("n_frames", n_frames, minimum=2)
        self.image_size = check_count("image_size", image_size, minimum=32)
        self.distractors = check_count("distractors", distractors, minimum=0)
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {_SPLITS}")
        self.occlusion, self.split, self.seed = bool(occlusion), split, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(f"clip {index} out of range for {self.n} clips")
        rng = np.random.default_rng([self.seed, _SPLITS.index(self.split), index, 11])
        return self._generate(rng, _GLYPH_OFFSET[self.split] + index * (self.distractors + 1))

    def _path(self, rng: np.random.Generator, size: np.ndarray) -> np.ndarray:
        """Centres (T, 2) in fractions of the side: constant speed, direction drifting, bouncing off borders."""
        t_frames = self.n_frames
        pos = rng.uniform(0.3, 0.7, 2)
        speed = rng.uniform(*_SPEED_RANGE)
        heading = rng.uniform(0, 2 * np.pi)
        out = np.empty((t_frames, 2))
        for t in range(t_frames):
            out[t] = pos
            heading += rng.normal(0, 0.15)
            step = speed * np.array([np.cos(heading), np.sin(heading)])
            pos = pos + step
            half = size[min(t + 1, t_frames - 1)] / 2
            for a in range(2):  # bounce
                if not half <= pos[a] <= 1 - half:
                    pos[a] = np.clip(pos[a], half, 1 - half)
                    heading = np.pi - heading if a == 0 else -heading
        return out

    def _objects(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Target first, then distractors: per-frame size (T,), centre (T, 2), angle (T,)."""
        t = np.linspace(0, 1, self.n_frames)
        objects = []
        for k in range(self.distractors + 1):
            start = rng.uniform(*_SIZE_RANGE)
            size = start * rng.uniform(*_GROWTH_RANGE) ** t if k == 0 else np.full(self.n_frames, start)
            angle0 = rng.uniform(-0.3, 0.3)
            turn = np.deg2rad(rng.uniform(-_TURN_DEG, _TURN_DEG))
            objects.append({"size": size, "centre": self._path(rng, size), "angle": angle0 + turn * t})
        return objects

    def _generate(self, rng: np.random.Generator, first_glyph: int) -> dict[str, Tensor]:
        T, S = self.n_frames, self.image_size
        back = background(rng, S, S, "texture")
        objects = self._objects(rng)
        target_colour = random_colour(rng, back)
        colours = [target_colour] + [target_colour if rng.random() < 0.5 else random_colour(rng, back)
                                     for _ in range(self.distractors)]
        frames = np.broadcast_to(back, (T, S, S, 3)).copy()
        target_ink = None
        for k in range(self.distractors, -1, -1):  # distractors first, the target on top
            obj = objects[k]
            ink = _render_object(glyph_strokes(first_glyph + k), obj, S, rng.uniform(0.06, 0.08))  # (T, S, S)
            frames = frames * (1 - ink[..., None]) + colours[k] * ink[..., None]
            if k == 0:
                target_ink = ink
        visible = np.ones(T, dtype=np.float32)
        if self.occlusion:
            frames, visible = self._occlude(rng, frames, target_ink, objects[0]["centre"])
        frames = frames + PIXEL_NOISE * rng.standard_normal(frames.shape).astype(np.float32)
        frames = torch.from_numpy(np.clip(frames, 0, 1).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
        return {"frames": frames, "boxes": _ink_boxes(target_ink >= _INK_THRESHOLD),
                "visible": torch.from_numpy(visible)}

    def _occlude(self, rng: np.random.Generator, frames: np.ndarray, target_ink: np.ndarray,
                 centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A bar crossing the frame (left to right or top to bottom), over the target's mid-clip position."""
        T, S = self.n_frames, self.image_size
        mid = int(rng.integers(T // 3, 2 * T // 3 + 1))
        along = int(rng.integers(2))  # 0: a vertical bar moving along x; 1: a horizontal bar moving along y
        thickness = int(rng.uniform(0.12, 0.2) * S)
        cross = int(_OCCLUDER_FRAMES * T) or 1
        colour = rng.random(3).astype(np.float32)
        mask = np.zeros((T, S, S), dtype=bool)
        target_at = centre[mid, along] * S
        for t in range(T):
            pos = target_at + (t - mid) * S / cross  # position of the bar's centre along its axis
            lo, hi = int(round(pos - thickness / 2)), int(round(pos + thickness / 2))
            lo, hi = max(lo, 0), min(hi, S)
            if hi > lo:
                if along == 0:
                    mask[t, :, lo:hi] = True
                else:
                    mask[t, lo:hi, :] = True
        frames = np.where(mask[..., None], colour, frames)
        ink = target_ink >= _INK_THRESHOLD
        covered = (ink & mask).sum((1, 2)) / np.maximum(ink.sum((1, 2)), 1)
        return frames, (1 - covered).astype(np.float32)

    def __repr__(self) -> str:
        return (f"Clips(split={self.split!r}, {self.n} clips x {self.n_frames} frames, {self.image_size} px, "
                f"{self.distractors} distractors, occlusion={self.occlusion})")


def _render_object(strokes: Tensor, obj: dict[str, Any], image_size: int, width: float) -> np.ndarray:
    """The ink of one glyph in every frame, (T, S, S): rendered in a small patch around it, then pasted
    (rasterising whole frames costs 10x more)."""
    T, S = len(obj["size"]), image_size
    patch = int(np.ceil(obj["size"].max() * S)) + 4
    centre = obj["centre"] * S  # (T, 2) pixels
    corner = np.round(centre - patch / 2).astype(int)  # (T, 2) top-left of each frame's patch
    ink = render_glyphs(strokes.expand(T, -1, -1, -1), patch, torch.from_numpy(obj["angle"]).float(),
                        torch.from_numpy(obj["size"] * S / patch).float(),
                        torch.from_numpy((centre - corner) / patch - 0.5).float(),
                        torch.full((T,), width)).numpy()  # (T, patch, patch)
    out = np.zeros((T, S, S), dtype=np.float32)
    for t in range(T):
        x0, y0 = corner[t]
        xs, ys = slice(max(x0, 0), min(x0 + patch, S)), slice(max(y0, 0), min(y0 + patch, S))
        out[t, ys, xs] = ink[t, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return out


def _ink_boxes(masks: np.ndarray) -> Tensor:
    """(T, H, W) bool -> float32 Tensor[T, 4] xyxy, ``x2 = last column + 1``."""
    rows, cols = masks.any(2), masks.any(1)  # (T, H), (T, W)
    out = np.zeros((len(masks), 4), dtype=np.float32)
    for t in range(len(masks)):
        ys, xs = np.flatnonzero(rows[t]), np.flatnonzero(cols[t])
        if len(xs):
            out[t] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return torch.from_numpy(out)
