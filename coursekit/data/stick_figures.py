"""``StickFigures``: articulated stick people in random poses with 15 keypoints (pose data, notebook 08).

A figure is a kinematic tree (pelvis -> torso -> neck -> head and arms; pelvis -> hips -> legs) with
joint angles drawn within plausible limits, then scaled, tilted, placed and drawn as thick limbs.
Coordinates follow :mod:`coursekit.data._render`: pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from coursekit.data._render import (
    MAX_TRIES,
    SceneDataset,
    SceneStack,
    background,
    finish,
    random_colour,
)

__all__ = ["StickFigures", "KEYPOINTS", "SKELETON", "FLIP_PAIRS"]

KEYPOINTS: tuple[str, ...] = (
    "head", "neck",
    "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "pelvis",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
)  # fmt: skip
_J = {name: k for k, name in enumerate(KEYPOINTS)}
SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8),
    (8, 9), (9, 10), (10, 11), (8, 12), (12, 13), (13, 14),
)  # fmt: skip
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((2, 5), (3, 6), (4, 7), (9, 12), (10, 13), (11, 14))

# Body proportions in torso lengths (neck-pelvis = 1); each one jittered by +-10% per figure.
_BONES = {"torso": 1.0, "neck": 0.42, "head": 0.2, "shoulder": 0.33, "upper_arm": 0.6, "forearm": 0.55,
          "hip": 0.2, "thigh": 0.8, "shin": 0.75}
# Joint limits in degrees. Raise/spread: away from hanging straight down, outwards positive.
_LEAN = 20  # torso from vertical
_NECK_BEND = 25  # head from the torso's direction
_ARM_RAISE = (-20, 170)
_ELBOW_FLEX = (0, 140)
_LEG_SPREAD = (-10, 50)
_KNEE_FLEX = (0, 110)
_TILT = 15  # the whole figure
_TORSO_FRACTION = (0.14, 0.24)  # torso length / image side: figures of 3.2 torsos are 45-77% of the image
_THICKNESS = (0.08, 0.16)  # limb thickness / torso length
_SLACK = 0.1  # share of the figure allowed outside the image on each side: cut-off joints occur
_RIGHT_SHADE = 0.7  # right limbs darker than left: a cue for left vs right, as clothes give in photos
_OCCLUDER_P = 0.5  # probability of an occluder (when occlusion=True)
_OCCLUDER_SIZE = (0.2, 0.5)  # occluder side / image side
_MIN_VISIBLE_BODY = 0.5  # an occluder may hide at most half of the figure's pixels
_MPII_HEAD = 0.6 * 2 * np.sqrt(2)  # MPII head size = 0.6 x head-box diagonal, in head radii


def _unit(degrees: float) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.array([np.cos(rad), np.sin(rad)])


def _pose(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(K, 2) joints in torso units (y down, pelvis at the origin) and the head radius.

    The figure faces the camera, so its right side is on the image's left.
    """
    L = {bone: length * rng.uniform(0.9, 1.1) for bone, length in _BONES.items()}
    j = np.zeros((len(KEYPOINTS), 2))
    up = 90 + rng.uniform(-_LEAN, _LEAN)  # built with y up, flipped at the end
    down = up + 180
    side = _unit(up - 90)  # towards the figure's left
    j[_J["neck"]] = L["torso"] * _unit(up)
    j[_J["head"]] = j[_J["neck"]] + L["neck"] * _unit(up + rng.uniform(-_NECK_BEND, _NECK_BEND))
    for sign, prefix in ((-1, "r_"), (1, "l_")):
        shoulder, elbow, wrist = (_J[prefix + name] for name in ("shoulder", "elbow", "wrist"))
        j[shoulder] = j[_J["neck"]] + sign * L["shoulder"] * side
        upper = down + sign * rng.uniform(*_ARM_RAISE)
        j[elbow] = j[shoulder] + L["upper_arm"] * _unit(upper)
        j[wrist] = j[elbow] + L["forearm"] * _unit(upper + rng.choice((-1, 1)) * rng.uniform(*_ELBOW_FLEX))
        hip, knee, ankle = (_J[prefix + name] for name in ("hip", "knee", "ankle"))
        j[hip] = sign * L["hip"] * side
        thigh = down + sign * rng.uniform(*_LEG_SPREAD)
        j[knee] = j[hip] + L["thigh"] * _unit(thigh)
        j[ankle] = j[knee] + L["shin"] * _unit(thigh + rng.choice((-1, 1)) * rng.uniform(*_KNEE_FLEX))
    tilt = np.deg2rad(rng.uniform(-_TILT, _TILT))
    rot = np.array([[np.cos(tilt), np.sin(tilt)], [-np.sin(tilt), np.cos(tilt)]])
    j = j @ rot
    j[:, 1] *= -1
    return j, L["head"]


def _paint_segment(shade: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, value: float) -> None:
    """Set ``shade`` (H, W) to ``value`` on pixels whose centre lies within ``radius`` of segment a-b.

    Only the segment's bounding box is visited: a limb covers a small part of the image.
    """
    H, W = shade.shape
    x0, y0 = np.clip(np.floor(np.minimum(a, b) - radius).astype(int), 0, [W, H])
    x1, y1 = np.clip(np.ceil(np.maximum(a, b) + radius).astype(int) + 1, 0, [W, H])
    if x0 >= x1 or y0 >= y1:
        return
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - a[0]  # (1, w) pixel centres minus a
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - a[1]  # (h, 1)
    ab = b - a
    t = np.clip((px * ab[0] + py * ab[1]) / max(float(ab @ ab), 1e-9), 0, 1)  # (h, w) projection on a-b
    dist2 = (px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2
    shade[y0:y1, x0:x1][dist2 <= radius**2] = value


_EDGE_SHADE = np.array([_RIGHT_SHADE if KEYPOINTS[j].startswith("r_") else 1.0 for _, j in SKELETON])


def _place(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, size: np.ndarray) -> np.ndarray:
    """A translation (2,) putting the box [lo, hi] in an image of ``size`` (W, H), up to _SLACK outside."""
    extent = hi - lo
    low = -_SLACK * extent - lo
    high = size + _SLACK * extent - hi
    centred = (size - extent) / 2 - lo  # a figure larger than the image: centre it
    return np.where(low <= high, rng.uniform(np.minimum(low, high), np.maximum(low, high)), centred)


class StickFigures(SceneDataset):
    """One articulated stick figure per image, with 15 keypoints; item ``i`` depends on (seed, i).

    Each item is ``(image, target)``:

    - ``image``: float32 ``Tensor[3, H, W]`` in [0, 1], textured background;
    - ``target["keypoints"]``: float32 ``Tensor[K, 2]`` (x, y) pixels, K = 15 in the order of ``KEYPOINTS``
      (pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``; a joint may lie outside the image);
    - ``target["visible"]``: bool ``Tensor[K]``: False when the joint is outside the image or under the
      occluder rectangle;
    - ``target["torso"]``, ``target["head"]``: floats in pixels, the neck-pelvis distance (PCK's normaliser,
      FLIC) and the MPII head size, 0.6 x the diagonal of the head's box (PCKh's normaliser);
    - ``target["boxes"]`` (float32 ``[1, 4]``, tight box of the visible figure pixels, ``x2 = last col + 1``),
      ``target["labels"]`` (``[1]``, 1 = person), ``target["masks"]`` (uint8 ``[1, H, W]``, visible pixels),
      ``semantic``, ``area``, ``iscrowd``, ``image_id``, as :class:`~coursekit.data.Shapes`.

    Pose: torso lean +-20 deg, arm raise -20..170 deg, elbow flex 0..140 deg, leg spread -10..50 deg, knee
    flex 0..110 deg, whole-figure tilt +-15 deg. The figure faces the camera (its right side on the image's
    left) and its right limbs are drawn darker. With ``occlusion=True`` half of the images get an occluder
    rectangle over the figure that hides at most half of its pixels. ``SKELETON``: limbs as index pairs;
    ``FLIP_PAIRS``: left/right joints to swap when the image is mirrored. Notebook 08.
    """

    CLASSES: tuple[str, ...] = ("background", "person")
    _SALT = 3
    KEYPOINTS = KEYPOINTS
    SKELETON = SKELETON
    FLIP_PAIRS = FLIP_PAIRS

    def __init__(self, n: int = 1000, image_size: int | tuple[int, int] = 128, seed: int = 0,
                 occlusion: bool = True) -> None:
        super().__init__(n, image_size, seed)
        if not isinstance(occlusion, bool):
            raise ValueError(f"occlusion must be True or False, got {occlusion!r}")
        self.occlusion = occlusion

    def _generate(self, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        H, W = self.height, self.width
        image = background(rng, H, W, "texture")
        joints, head_radius = _pose(rng)
        scale = rng.uniform(*_TORSO_FRACTION) * min(H, W)
        half_thickness = max(1.0, rng.uniform(*_THICKNESS) * scale / 2)
        joints, head_radius = joints * scale, head_radius * scale
        pad = max(head_radius, half_thickness)
        joints += _place(rng, joints.min(0) - pad, joints.max(0) + pad, np.array([W, H], float))
        mask = self._draw(rng, image, joints, head_radius, half_thickness)
        visible_mask, hidden = self._occlude(rng, image, mask) if self.occlusion else (mask, None)
        stack = SceneStack(H, W, min_visible=0.0)
        stack.add(visible_mask, 1)
        target = stack.target()
        target["keypoints"] = torch.from_numpy(joints.astype(np.float32))
        target["visible"] = torch.from_numpy(self._visible(joints, hidden))
        target["torso"] = float(np.linalg.norm(joints[_J["neck"]] - joints[_J["pelvis"]]))
        target["head"] = float(_MPII_HEAD * head_radius)
        return finish(rng, image), target

    def _draw(self, rng: np.random.Generator, image: np.ndarray, joints: np.ndarray, head_radius: float,
              half_thickness: float) -> np.ndarray:
        """Paint the figure into ``image`` (in place); return its (H, W) bool mask."""
        shade = np.zeros((self.height, self.width), np.float32)  # 0 = not on the figure
        for (i, j), value in zip(SKELETON, _EDGE_SHADE, strict=True):
            _paint_segment(shade, joints[i], joints[j], half_thickness, value)
        head = joints[_J["head"]]
        _paint_segment(shade, head, head, head_radius, 1.0)  # a zero-length segment is a disk
        mask = shade > 0
        colour = random_colour(rng, image[mask] if mask.any() else image)
        image[mask] = np.clip(colour * shade[mask, None], 0, 1)
        return mask

    def _occlude(self, rng: np.random.Generator, image: np.ndarray,
                 mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """Maybe paint an occluder rectangle (x0, y0, x1, y1) over the figure; return the visible mask."""
        H, W = self.height, self.width
        if rng.random() >= _OCCLUDER_P:
            return mask, None
        ys, xs = np.nonzero(mask)
        area = len(ys)
        for _ in range(MAX_TRIES):
            h = int(rng.uniform(*_OCCLUDER_SIZE) * H)
            w = int(rng.uniform(*_OCCLUDER_SIZE) * W)
            k = rng.integers(area)  # centred on a body pixel, so it really covers something
            y0, x0 = max(0, ys[k] - h // 2), max(0, xs[k] - w // 2)
            y1, x1 = min(H, y0 + h), min(W, x0 + w)
            visible = mask.copy()
            visible[y0:y1, x0:x1] = False
            if np.count_nonzero(visible) >= _MIN_VISIBLE_BODY * area:
                image[y0:y1, x0:x1] = background(rng, y1 - y0, x1 - x0, "noise")
                return visible, (int(x0), int(y0), int(x1), int(y1))
        return mask, None

    def _visible(self, joints: np.ndarray, hidden: tuple[int, int, int, int] | None) -> np.ndarray:
        x, y = joints[:, 0], joints[:, 1]
        inside = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height)
        if hidden is not None:
            x0, y0, x1, y1 = hidden
            inside &= ~((x >= x0) & (x < x1) & (y >= y0) & (y < y1))
        return inside

    def __repr__(self) -> str:
        return (f"StickFigures(n={self.n}, image_size={self.image_size}, seed={self.seed}, "
                f"occlusion={self.occlusion})")
