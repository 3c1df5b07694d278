"""``Shapes``: generated scenes of coloured geometric shapes with boxes, instance and semantic masks.

The course's workhorse dataset (notebooks 02-07): small enough to train a detector or a segmenter
on a 2-core CPU in minutes, hard enough to need the ideas (occlusion, several scales, textured
backgrounds), and labelled exactly. Conventions and the occlusion rule: :mod:`coursekit.data._render`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import skimage.draw
from torch import Tensor

from coursekit.data._render import (
    BACKGROUNDS,
    MAX_TRIES,
    SceneDataset,
    SceneStack,
    background,
    check_count,
    finish,
    random_colour,
)

__all__ = ["Shapes", "SHAPE_KINDS", "single_shapes"]

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
_STAR_INNER = 0.45  # inner / outer radius of the 5-pointed star
_CROSS_ARM = 0.35  # half-width of a cross arm / its half-length
_SHADING = 0.15  # brightness varies by +-15% across an object: a hint of light, not a flat sticker


def _unit_polygon(kind: str) -> np.ndarray:
    """(V, 2) vertices (x, y) of a shape of circumradius ~1 centred at the origin."""
    if kind == "square":
        return _regular(4, 1.0, np.pi / 4)
    if kind == "triangle":
        return _regular(3, 1.0, -np.pi / 2)
    if kind == "hexagon":
        return _regular(6, 1.0, 0.0)
    if kind == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER)
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    if kind == "cross":
        a = _CROSS_ARM
        quarter = np.array([[a, 1], [a, a], [1, a]])  # one corner of the plus sign, turned 4 times
        turns = [quarter @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
                 for t in np.arange(4) * -np.pi / 2]  # clockwise, so vertices stay in order
        return np.concatenate(turns) / np.hypot(1, a)
    raise ValueError(f"unknown shape kind {kind!r}; choose from {SHAPE_KINDS}")


def _regular(sides: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + np.arange(sides) * 2 * np.pi / sides
    return radius * np.stack([np.cos(angles), np.sin(angles)], 1)


_UNIT_POLYGONS = {kind: _unit_polygon(kind) for kind in SHAPE_KINDS if kind != "circle"}


def _shape_mask(kind: str, cx: float, cy: float, radius: float, angle: float,
                shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of a shape centred at pixel coordinates (cx, cy), rotated by ``angle``."""
    mask = np.zeros(shape, bool)
    # skimage.draw works in index coordinates: pixel (r, c) sits at (r, c), i.e. centre - 0.5.
    if kind == "circle":
        rr, cc = skimage.draw.disk((cy - 0.5, cx - 0.5), radius, shape=shape)
    else:
        c, s = np.cos(angle), np.sin(angle)
        xy = _UNIT_POLYGONS[kind] @ np.array([[c, s], [-s, c]]) * radius
        rr, cc = skimage.draw.polygon(xy[:, 1] + cy - 0.5, xy[:, 0] + cx - 0.5, shape=shape)
    mask[rr, cc] = True
    return mask


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``mask`` with ``colour``, shaded by a linear ramp in a random direction (in place)."""
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xs - xs.mean()) + np.sin(angle) * (ys - ys.mean())
    ramp /= max(float(np.abs(ramp).max()), 1.0)
    image[ys, xs] = np.clip(colour * (1 + _SHADING * ramp[:, None]), 0, 1)


class Shapes(SceneDataset):
    """Scenes of circles, squares, triangles, stars, hexagons and crosses; item ``i`` depends on (seed, i).

    Each item is ``(image, target)``:

    - ``image``: float32 ``Tensor[3, H, W]`` in [0, 1];
    - ``target["boxes"]``: float32 ``Tensor[N, 4]`` xyxy pixels, the tight box of the *visible* mask,
      ``x2 = last column + 1`` (``torchvision.ops.masks_to_boxes(masks) + [0, 0, 1, 1]``);
    - ``target["labels"]``: int64 ``Tensor[N]`` in ``1..len(CLASSES) - 1`` (0 is background);
    - ``target["masks"]``: uint8 ``Tensor[N, H, W]``, the visible part of each object (disjoint);
    - ``target["semantic"]``: int64 ``Tensor[H, W]``, the label of the front-most object per pixel,
      0 elsewhere;
    - ``target["area"]`` (float32 ``[N]``, visible pixels), ``target["iscrowd"]`` (zeros) for COCO tools;
    - ``target["image_id"]``: ``i``.

    Objects are drawn in order, later ones over earlier ones. Occlusion rule: a new object is placed
    only where every earlier one keeps >= 40% of its area visible (up to 30 placements are tried,
    then the slot stays empty; in practice scenes get the number of objects asked for). Objects lie
    fully inside the image; size = circumscribed diameter in ``[min_size, max_size]`` pixels.

    ``classes`` selects and orders the kinds drawn: ``Shapes(classes=("circle", "square"))`` has
    labels 1 = circle, 2 = square, and ``data.CLASSES == ("background", "circle", "square")``.
    The class attribute ``Shapes.CLASSES`` lists all six kinds. ``num_classes`` counts background.
    ``background``: ``"texture"`` (noise, gradients and real grey textures), ``"noise"``, ``"plain"``.
    Used in notebooks 02 (localization), 04-05 (detection), 06 (segmentation), 07 (Mask R-CNN).
    """

    CLASSES: tuple[str, ...] = ("background", *SHAPE_KINDS)
    _SALT = 1

    def __init__(
        self,
        n: int = 1000,
        image_size: int | tuple[int, int] = 128,
        min_objects: int = 1,
        max_objects: int = 4,
        classes: Sequence[str] | None = None,
        min_size: int = 12,
        max_size: int | None = None,
        seed: int = 0,
        background: str = "texture",
    ) -> None:
        super().__init__(n, image_size, seed)
        self.min_objects = check_count("min_objects", min_objects, minimum=0)
        self.max_objects = check_count("max_objects", max_objects, minimum=1)
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({min_objects}) must be <= max_objects ({max_objects})")
        self.CLASSES = ("background", *self._check_classes(classes))
        side = min(self.height, self.width)
        self.min_size = check_count("min_size", min_size, minimum=6)
        self.max_size = side // 2 if max_size is None else check_count("max_size", max_size)
        if not self.min_size <= self.max_size <= side:
            raise ValueError(
                f"need min_size <= max_size <= image side: got min_size={self.min_size}, "
                f"max_size={self.max_size}, image side {side}; pass a smaller min_size or a larger image_size"
            )
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r}; choose one of {BACKGROUNDS}")
        self.background = background

    @staticmethod
    def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...]:
        if classes is None:
            return SHAPE_KINDS
        if isinstance(classes, str):
            classes = (classes,)
        classes = tuple(classes)
        unknown = [c for c in classes if c not in SHAPE_KINDS]
        if unknown or not classes:
            raise ValueError(f"unknown shape class(es) {unknown or classes!r}; choose from {SHAPE_KINDS}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must not repeat a kind, got {classes!r}")
        return classes

    def _generate(self, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        H, W = self.height, self.width
        image = background(rng, H, W, self.background)
        stack = SceneStack(H, W)
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            label = int(rng.integers(1, len(self.CLASSES)))
            radius = rng.uniform(self.min_size, self.max_size) / 2
            for _ in range(MAX_TRIES):
                cx, cy = rng.uniform(radius, W - radius), rng.uniform(radius, H - radius)
                mask = _shape_mask(self.CLASSES[label], cx, cy, radius, rng.uniform(0, 2 * np.pi), (H, W))
                if stack.fits(mask):
                    _paint(image, mask, random_colour(rng, image[mask]), rng)
                    stack.add(mask, label)
                    break
        return finish(rng, image), stack.target()

    def __repr__(self) -> str:
        return (f"Shapes(n={self.n}, image_size={self.image_size}, "
                f"objects={self.min_objects}..{self.max_objects}, "
                f"classes={self.CLASSES[1:]}, size={self.min_size}..{self.max_size}, seed={self.seed}, "
                f"background={self.background!r})")


# The offline backbone's source task (coursekit.weights): changing these changes its weights (bump its version).
_SINGLE_SHAPE_SIZE = (10, 24)  # min, max side of the shape in pixels, at 32 px images
_SINGLE_SHAPE_IMAGE = 32


def single_shapes(n: int, image_size: int = _SINGLE_SHAPE_IMAGE, seed: int = 0) -> Shapes:
    """One shape per scene, on a textured background: "which of the 6 kinds is it?", an ImageNet in
    miniature. The source task coursekit's offline ResNet-18 is pretrained on (:mod:`coursekit.weights`),
    and notebook 01's "similar" target task. Object sizes scale with ``image_size``."""
    low, high = _SINGLE_SHAPE_SIZE
    scale = image_size / _SINGLE_SHAPE_IMAGE
    return Shapes(n=n, image_size=image_size, min_objects=1, max_objects=1,
                  min_size=max(6, round(low * scale)), max_size=round(high * scale), seed=seed)
