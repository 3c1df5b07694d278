"""``Identities``: many instances of many hand-drawn-like glyphs, for retrieval on identities never seen in training.

A face-identification data set in miniature (and an Omniglot in miniature): identity ``k`` is one glyph,
a few random pen strokes drawn from a seed of its own; an *instance* of it is the glyph under a random
similarity transform (rotation, scale, shift), a random stroke width, ink colour and background, plus
sensor noise. Identities of the ``"train"`` and ``"test"`` splits come from disjoint seed ranges, so
an embedding evaluated on ``"test"`` meets glyphs it has never seen: recall@k then measures
generalisation to new identities, as face identification does (notebook 10, assignment 07).

:func:`held_out_digits` gives the same protocol on real handwriting: scikit-learn's digits split by
class (train on some digits, search among the others).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from coursekit.data._render import background, check_count, finish, random_colour

__all__ = ["Identities", "glyph_strokes", "render_glyphs", "held_out_digits"]

Split = Literal["train", "test"]
_SPLITS: tuple[str, ...] = get_args(Split)
_SPLIT_OFFSET = {"train": 0, "test": 1_000_000}  # identity seeds: train 0, 1, ...; test 1e6, 1e6 + 1, ...
_STROKES = 4  # pen strokes (line segments) per glyph: a 3-segment polyline and one free segment
_ROTATION_DEG = 20.0  # instances are rotated uniformly in +-20 degrees
_SCALE_RANGE = (0.8, 1.15)  # and scaled
_SHIFT = 0.08  # and shifted by up to 8% of the image side
_WIDTH_RANGE = (0.045, 0.08)  # stroke half-width, in fractions of the image side
_ANTIALIAS = 0.03  # ink falls from 1 to 0 over this distance (fraction of the side)
_CHUNK = 512  # instances rasterised at once (memory: chunk x pixels x strokes floats)


def glyph_strokes(identity: int) -> Tensor:
    """The pen strokes of one identity: ``Tensor[4, 2, 2]`` (stroke, endpoint, xy) in the unit square.

    A polyline through 4 random points and one free segment, all within [0.15, 0.85]^2 and with
    segments at least 0.25 long; a pure function of ``identity``.
    """
    rng = np.random.default_rng([identity, 10])
    while True:
        pts = rng.uniform(0.15, 0.85, size=(4, 2))
        free = rng.uniform(0.15, 0.85, size=(2, 2))
        segs = np.stack([pts[:-1], pts[1:]], axis=1)  # (3, 2, 2)
        segs = np.concatenate([segs, free[None]], axis=0)  # (4, 2, 2)
        if (np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1) >= 0.25).all():
            return torch.from_numpy(segs.astype(np.float32))


def _segment_distance(points: Tensor, segments: Tensor) -> Tensor:
    """Distance of every point to its nearest segment: points (P, 2), segments (N, S, 2, 2) -> (N, P)."""
    a, b = segments[:, None, :, 0], segments[:, None, :, 1]  # (N, 1, S, 2)
    p = points[None, :, None, :]  # (1, P, 1, 2)
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)  # (N, P, S) projection on the line
    nearest = a + t.clamp(0, 1)[..., None] * ab
    return (p - nearest).norm(dim=-1).amin(-1)  # (N, P)


def render_glyphs(strokes: Tensor, image_size: int, angle: Tensor, scale: Tensor, shift: Tensor,
                  width: Tensor) -> Tensor:
    """Rasterise transformed glyphs: the ink (alpha) of each instance, ``Tensor[N, S, S]`` in [0, 1].

    Args:
        strokes (Tensor[N, K, 2, 2]): each instance's strokes in the unit square (:func:`glyph_strokes`).
        image_size (int): side S in pixels.
        angle (Tensor[N]): rotation about the centre, radians; scale (Tensor[N]); shift (Tensor[N, 2]):
            in fractions of the side; width (Tensor[N]): stroke half-width, fraction of the side.
    """
    cos, sin = angle.cos(), angle.sin()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (N, 2, 2)
    centred = strokes - 0.5
    moved = torch.einsum("nij,nksj->nksi", rot, centred) * scale[:, None, None, None]
    moved = moved + 0.5 + shift[:, None, None, :]
    grid = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], -1)  # (P, 2), (x, y)
    out = []
    for i in range(0, len(strokes), _CHUNK):
        d = _segment_distance(points, moved[i : i + _CHUNK])  # (n, P)
        w = (width * scale)[i : i + _CHUNK, None]
        out.append(((w + _ANTIALIAS - d) / _ANTIALIAS).clamp(0, 1))
    return torch.cat(out).view(-1, image_size, image_size)


class Identities(Dataset):
    """``per_identity`` instances of each of ``num_identities`` glyph identities, generated at once.

    Item ``i``: ``(image float32 Tensor[3, S, S] in [0, 1], identity int)``, identities numbered
    ``0 .. num_identities - 1`` within the split (``labels``), instances of one identity consecutive.
    ``images`` (``Tensor[N, 3, S, S]``) and ``labels`` (int64 ``Tensor[N]``) hold everything.

    ``split="train"`` and ``"test"`` draw their glyphs from disjoint seed ranges: no test identity is
    ever a training one. ``seed`` fixes the instances (pose, colours, backgrounds), not the glyphs.
    Notebook 10, assignment 07.
    """

    def __init__(self, num_identities: int = 100, per_identity: int = 10, image_size: int = 32,
                 split: Split = "train", seed: int = 0, background: str = "noise") -> None:
        self.num_identities = check_count("num_identities", num_identities)
        self.per_identity = check_count("per_identity", per_identity)
        self.image_size = check_count("image_size", image_size, minimum=8)
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {_SPLITS}")
        self.split, self.seed, self.background = split, seed, background
        self.labels = torch.arange(self.num_identities).repeat_interleave(self.per_identity)  # (N,)
        self.images = self._generate()  # (N, 3, S, S)

    def _generate(self) -> Tensor:
        n, size = len(self.labels), self.image_size
        offset = _SPLIT_OFFSET[self.split]
        glyphs = torch.stack([glyph_strokes(offset + k) for k in range(self.num_identities)])
        rng = np.random.default_rng([self.seed, _SPLIT_OFFSET[self.split] // 1000 + 7])
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        angle = (torch.rand(n, generator=g) * 2 - 1) * np.deg2rad(_ROTATION_DEG)
        scale = _SCALE_RANGE[0] + torch.rand(n, generator=g) * (_SCALE_RANGE[1] - _SCALE_RANGE[0])
        shift = (torch.rand(n, 2, generator=g) * 2 - 1) * _SHIFT
        width = _WIDTH_RANGE[0] + torch.rand(n, generator=g) * (_WIDTH_RANGE[1] - _WIDTH_RANGE[0])
        ink = render_glyphs(glyphs[self.labels], size, angle, scale, shift, width).numpy()  # (N, S, S)
        images = []
        for alpha in ink:
            back = background(rng, size, size, self.background)
            colour = random_colour(rng, back)
            images.append(finish(rng, back * (1 - alpha[..., None]) + colour * alpha[..., None]))
        return torch.stack(images)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (f"Identities(split={self.split!r}, {self.num_identities} identities x {self.per_identity} "
                f"instances, {self.image_size} px)")


def held_out_digits(held_out: tuple[int, ...] = (7, 8, 9), image_size: int = 32) -> dict[str, Tensor]:
    """scikit-learn's 1,797 real digits split by *class*: train on some digits, retrieve among the others.

    Returns ``{"train_images", "train_labels", "test_images", "test_labels"}``: images float32
    ``Tensor[N, 3, S, S]`` (grey replicated, upsampled bilinearly from 8x8), labels the digits.
    """
    held = tuple(int(d) for d in held_out)
    if not held or any(d not in range(10) for d in held) or len(set(held)) == 10:
        raise ValueError(f"held_out must be some (not all) of the digits 0-9, got {held_out!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(bunch.target.astype(np.int64))
    test = torch.isin(y, torch.tensor(held))
    return {"train_images": x[~test], "train_labels": y[~test], "test_images": x[test], "test_labels": y[test]}
