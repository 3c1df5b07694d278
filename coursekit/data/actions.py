"""``ActionClips``: short videos of a stick figure doing one of eight actions (action recognition, notebook 11).

A clip is ``n_frames`` frames of one figure on one static background. Six of the eight actions come in
pairs that are **the same frames in reverse order**: *stand up* is *sit down* played backwards, *lower
arms* is *raise arms* backwards, *walk left* is *walk right* backwards. An item of the second class of a
pair is made exactly like an item of the first and then reversed in time, so the two classes have the
same distribution of frame *sets*: any model that ignores frame order (features averaged over frames)
gives a clip and its reverse the same score, and cannot beat 50% within a pair. *Wave* and *jumping
jack* are their own reverse (in distribution) and tell apart by their frames alone.

The figure faces the camera: joint angles in degrees (0 = hanging straight down, raise/spread outwards
positive), its feet on a ground line, a torso of 20-25% of the image height.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from coursekit.data._render import background, check_count, check_image_size, finish, random_colour
from coursekit.data.stick_figures import KEYPOINTS, SKELETON

__all__ = ["ActionClips", "ACTIONS", "REVERSE_PAIRS"]

ACTIONS: tuple[str, ...] = (
    "sit_down", "stand_up", "raise_arms", "lower_arms", "walk_right", "walk_left", "wave", "jumping_jack",
)  # fmt: skip
# (action, the same action played backwards): frame averaging cannot tell these apart.
REVERSE_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5))
_REVERSED_FROM = {b: a for a, b in REVERSE_PAIRS}  # the second of a pair is the first, reversed in time

_J = {name: k for k, name in enumerate(KEYPOINTS)}
# Body in torso lengths (neck to pelvis = 1), a plain figure (no per-figure jitter of proportions).
_NECK, _HEAD, _SHOULDER, _UPPER_ARM, _FOREARM, _HIP, _THIGH, _SHIN = 0.42, 0.22, 0.33, 0.6, 0.55, 0.2, 0.8, 0.75
_TORSO_FRACTION = (0.2, 0.25)  # torso length / image height: the figure is 65-80% of it
_THICKNESS = 0.3  # limb thickness / torso length (~2 px at 32 px: thin limbs vanish in the first pooling)
_MIN_FRAMES = 4


def _unit(degrees: np.ndarray | float) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.sin(rad), -np.cos(rad)], -1)  # 0 deg points down (y up), positive to the right


def _skeleton(arm: tuple[float, float], elbow: tuple[float, float], spread: tuple[float, float],
              knee: tuple[float, float]) -> np.ndarray:
    """Joints (K, 2) in torso units, y up, pelvis at the origin. Pairs are (right, left) in the figure's terms;
    the figure faces us, so its right is on the image's left (direction -1)."""
    j = np.zeros((len(KEYPOINTS), 2))
    j[_J["neck"]] = (0, 1)
    j[_J["head"]] = (0, 1 + _NECK)
    for k, (sign, side) in enumerate(((-1, "r_"), (1, "l_"))):
        shoulder = j[_J["neck"]] + (sign * _SHOULDER, 0)
        elbow_at = shoulder + _UPPER_ARM * _unit(sign * arm[k])
        j[_J[side + "shoulder"]], j[_J[side + "elbow"]] = shoulder, elbow_at
        j[_J[side + "wrist"]] = elbow_at + _FOREARM * _unit(sign * (arm[k] + elbow[k]))
        hip = np.array([sign * _HIP, 0.0])
        knee_at = hip + _THIGH * _unit(sign * spread[k])
        j[_J[side + "hip"]], j[_J[side + "knee"]] = hip, knee_at
        j[_J[side + "ankle"]] = knee_at + _SHIN * _unit(sign * (spread[k] - knee[k]))  # shin turns back inwards
    return j


def _ease(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)  # smoothstep: starts and stops gently


# Each motion: rng, times t in [0, 1] (T,) -> per-frame angles (arm, elbow, spread, knee; each (T, 2)) and
# horizontal shift (T,) in torso units.
Motion = Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, ...]]


def _still(rng: np.random.Generator, T: int, lo: float, hi: float) -> np.ndarray:
    return np.broadcast_to(rng.uniform(lo, hi, 2), (T, 2)).copy()


def _sit_down(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, ...]:
    T, s = len(t), _ease(np.clip((t - rng.uniform(0, 0.2)) / rng.uniform(0.6, 0.8), 0, 1))[:, None]
    spread = 5 + s * rng.uniform(35, 50)
    knee = s * rng.uniform(80, 110)
    return _still(rng, T, 5, 35), _still(rng, T, 0, 40), spread * np.ones((1, 2)), knee * np.ones((1, 2)), np.zeros(T)


def _raise_arms(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, ...]:
    T, s = len(t), _ease(np.clip((t - rng.uniform(0, 0.2)) / rng.uniform(0.6, 0.8), 0, 1))[:, None]
    arm = rng.uniform(0, 20) + s * rng.uniform(130, 150)
    return arm * np.ones((1, 2)), _still(rng, T, 0, 20), _still(rng, T, 0, 15), np.zeros((T, 2)), np.zeros(T)


def _walk_right(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, ...]:
    T = len(t)
    phase = 2 * np.pi * rng.uniform(1.0, 2.0) * t + rng.uniform(0, 2 * np.pi)
    swing = rng.uniform(15, 25) * np.sin(phase)[:, None] * np.array([[1, -1]])
    distance = rng.uniform(0.8, 1.2)
    shift = distance * (t - 0.5)
    return 15 - swing, _still(rng, T, 10, 30), 12 + swing, np.abs(swing) * 0.8, shift


def _wave(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, ...]:
    T = len(t)
    side = rng.integers(2)
    arm, elbow = _still(rng, T, 0, 20), _still(rng, T, 0, 20)
    arm[:, side] = rng.uniform(110, 140)
    elbow[:, side] = 45 + 35 * np.sin(2 * np.pi * rng.uniform(1.5, 2.5) * t + rng.uniform(0, 2 * np.pi))
    return arm, elbow, _still(rng, T, 0, 15), np.zeros((T, 2)), np.zeros(T)


def _jumping_jack(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, ...]:
    T = len(t)
    s = ((1 - np.cos(2 * np.pi * t)) / 2)[:, None] * np.ones((1, 2))  # out and back: the same both ways
    arm, spread = 10 + s * rng.uniform(120, 150), 3 + s * rng.uniform(25, 35)
    return arm, _still(rng, T, 0, 20), spread, np.zeros((T, 2)), np.zeros(T)


_MOTIONS: dict[str, Motion] = {"sit_down": _sit_down, "raise_arms": _raise_arms, "walk_right": _walk_right,
                               "wave": _wave, "jumping_jack": _jumping_jack}


_LIMBS = np.array(SKELETON)  # (S, 2) joint indices


def _rasterise(xy: np.ndarray, half_thickness: float, head_radius: float, H: int, W: int) -> np.ndarray:
    """Masks (T, H, W) bool of a figure in every frame: pixels whose centre is within ``half_thickness`` of a
    limb (joints ``xy`` (T, K, 2) in pixels) or within ``head_radius`` of the head. All frames and limbs at once
    (the test of ``StickFigures``' limb painter, for all limbs and frames in one go)."""
    py, px = (g.ravel() for g in np.mgrid[0:H, 0:W].astype(np.float32) + 0.5)  # (P,) pixel centres
    xy = xy.astype(np.float32)
    a, b = xy[:, _LIMBS[:, 0]], xy[:, _LIMBS[:, 1]]  # (T, S, 2)
    abx, aby = (b - a)[..., 0, None], (b - a)[..., 1, None]  # (T, S, 1)
    apx, apy = px - a[..., 0, None], py - a[..., 1, None]  # (T, S, P)
    t = np.clip((apx * abx + apy * aby) / np.maximum(abx * abx + aby * aby, 1e-9), 0, 1)
    on_limb = ((apx - t * abx) ** 2 + (apy - t * aby) ** 2 <= half_thickness**2).any(1)  # (T, P)
    head = xy[:, _J["head"]]  # (T, 2)
    on_head = (px - head[:, 0, None]) ** 2 + (py - head[:, 1, None]) ** 2 <= head_radius**2
    return (on_limb | on_head).reshape(-1, H, W)


class ActionClips(Dataset):
    """``n`` clips, item ``i`` a pure function of ``(seed, i)``; labels cycle through ``ACTIONS`` (balanced).

    Each item is ``(clip, label)``: ``clip`` float32 ``Tensor[T, 3, H, W]`` in [0, 1] (frames first; a 3D
    CNN wants ``[3, T, H, W]``: ``clip.transpose(0, 1)``), ``label`` an int, the index in ``ACTIONS``.
    Per clip: background (static), figure colour, size, position and the action's speed and range are
    random; sensor noise differs per frame. ``REVERSE_PAIRS`` lists the (action, reversed action) pairs.
    """

    ACTIONS = ACTIONS
    REVERSE_PAIRS = REVERSE_PAIRS
    _SALT = 11

    def __init__(self, n: int = 800, image_size: int | tuple[int, int] = 32, n_frames: int = 8,
                 seed: int = 0) -> None:
        self.n = check_count("n", n)
        self.height, self.width = check_image_size(image_size)
        self.n_frames = check_count("n_frames", n_frames, minimum=_MIN_FRAMES)
        self.seed = check_count("seed", seed, minimum=0)

    @property
    def num_classes(self) -> int:
        return len(ACTIONS)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} clips")
        label = int(index) % len(ACTIONS)
        rng = np.random.default_rng((self.seed, self._SALT, int(index)))
        return self.render(ACTIONS[label], rng), label

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All clips stacked: ``(Tensor[N, T, 3, H, W], Tensor[N] int64)``."""
        clips, labels = zip(*(self[i] for i in range(self.n)), strict=True)
        return torch.stack(clips), torch.tensor(labels)

    def render(self, action: str, rng: np.random.Generator) -> Tensor:
        """One clip of ``action`` drawn with ``rng``: ``Tensor[T, 3, H, W]``."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; choose one of {ACTIONS}")
        forward = ACTIONS[_REVERSED_FROM.get(ACTIONS.index(action), ACTIONS.index(action))]
        H, W, T = self.height, self.width, self.n_frames
        arm, elbow, spread, knee, shift = _MOTIONS[forward](rng, np.linspace(0, 1, T))
        scale = rng.uniform(*_TORSO_FRACTION) * H
        half_thickness = max(0.6, _THICKNESS * scale / 2)
        frames = [_skeleton(arm[f], elbow[f], spread[f], knee[f]) for f in range(T)]
        ground = rng.uniform(0.88, 0.97) * H
        body_half_width = 1.2 * scale  # arms out and legs spread stay within ~1.2 torsos of the centre
        travel = scale * (shift.max() - shift.min())
        centre = rng.uniform(body_half_width + travel / 2, W - body_half_width - travel / 2) \
            if W > 2 * body_half_width + travel else W / 2
        image0 = background(rng, H, W, "texture")
        xy = np.stack(frames) * scale * np.array([1.0, -1.0])  # (T, K, 2) pixels, y down
        xy[..., 0] += centre + scale * shift[:, None]
        xy[..., 1] += ground - xy[..., 1].max(1, keepdims=True) - half_thickness  # lowest foot on the ground
        masks = _rasterise(xy, half_thickness, _HEAD * scale, H, W)  # (T, H, W)
        colour = random_colour(rng, image0[masks[0]] if masks[0].any() else image0)
        clip = [np.where(mask[..., None], colour, image0) for mask in masks]
        noisy = [finish(rng, frame) for frame in clip]
        if forward != action:
            noisy = noisy[::-1]
        return torch.stack(noisy)

    def __repr__(self) -> str:
        return (f"ActionClips(n={self.n}, image_size={(self.height, self.width)}, n_frames={self.n_frames}, "
                f"seed={self.seed})")
