"""``DigitScenes``: real handwritten digits (scikit-learn's 8x8 set) placed at several scales on a background.

Real strokes, ten classes, objects of very different sizes: the multiscale detection data of notebooks
04-05, and the "different domain" of notebook 01.
Conventions and occlusion rule: :mod:`coursekit.data._render`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
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
    resize_bilinear,
)

__all__ = ["DigitScenes", "DIGIT_SPLITS"]

Split = Literal["train", "test"]
# scikit-learn's 1797 digits, split once by index: scenes of the test split show handwriting never trained on.
DIGIT_SPLITS: dict[str, range] = {"train": range(0, 1500), "test": range(1500, 1797)}
_INK_THRESHOLD = 0.4  # ink (0..1) at or above which a pixel belongs to the digit's mask
_PAD = 1  # zero border around the 8x8 glyph so upsampled strokes fade out instead of being cut


@lru_cache(maxsize=1)
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 10, 10) float32 ink in [0, 1] (8x8 plus a zero border) and (1797,) int64 digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ink = np.pad(bunch.images.astype(np.float32) / 16.0, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    return ink, bunch.target.astype(np.int64)


class DigitScenes(SceneDataset):
    """Scenes of 1-4 real handwritten digits at several scales; item ``i`` depends on (seed, i).

    ``(image, target)`` as :class:`~coursekit.data.Shapes` (``boxes``, ``labels``, ``masks``,
    ``semantic``, ``area``, ``iscrowd``, ``image_id``), with ``labels = digit + 1`` (1..10, so
    ``CLASSES = ("background", "0", ..., "9")``) and ``target["digit_ids"]`` (int64 ``[N]``): the
    index of each glyph in ``sklearn.datasets.load_digits()``.

    A digit's 8x8 glyph is upsampled bilinearly to ``s x s`` pixels (``s`` uniform in ``scale_range``),
    alpha-blended in a random colour (the ink is the alpha), and its mask is ``ink >= 0.4``; boxes
    are the tight boxes of the visible masks. Same occlusion rule as ``Shapes`` (every earlier digit
    keeps >= 40% of its mask visible).

    ``split``: ``"train"`` draws glyphs 0..1499 of ``load_digits()``, ``"test"`` glyphs 1500..1796:
    disjoint, so held-out scenes contain handwriting the model has never seen (``DIGIT_SPLITS``).
    Used in notebooks 01 (transfer), 04-05 (detection at several scales).
    """

    CLASSES: tuple[str, ...] = ("background", *(str(d) for d in range(10)))
    _SALT = 2

    def __init__(
        self,
        n: int = 1000,
        image_size: int | tuple[int, int] = 128,
        min_objects: int = 1,
        max_objects: int = 4,
        scale_range: tuple[int, int] = (16, 48),
        seed: int = 0,
        split: Split = "train",
        background: str = "texture",
    ) -> None:
        super().__init__(n, image_size, seed)
        self.min_objects = check_count("min_objects", min_objects, minimum=0)
        self.max_objects = check_count("max_objects", max_objects, minimum=1)
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({min_objects}) must be <= max_objects ({max_objects})")
        if len(tuple(scale_range)) != 2:
            raise ValueError(f"scale_range must be a pair (lo, hi) of sizes in pixels, got {scale_range!r}")
        lo, hi = (check_count("scale_range", s, minimum=8) for s in scale_range)
        side = min(self.height, self.width)
        if not lo <= hi <= side:
            raise ValueError(
                f"scale_range must be (lo, hi) with 8 <= lo <= hi <= image side {side}, "
                f"got {tuple(scale_range)}"
            )
        self.scale_range = (lo, hi)
        if split not in DIGIT_SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {tuple(DIGIT_SPLITS)}")
        self.split = split
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r}; choose one of {BACKGROUNDS}")
        self.background = background

    def _generate(self, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        H, W = self.height, self.width
        ink_all, digits = _glyphs()
        pool = DIGIT_SPLITS[self.split]
        image = background(rng, H, W, self.background)
        stack, ids = SceneStack(H, W), []
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            glyph = pool[int(rng.integers(len(pool)))]
            # the padded 10x10 glyph is scaled so that its 8x8 core spans s pixels
            size = round(rng.uniform(*self.scale_range) * ink_all.shape[1] / 8)
            size = min(size, H, W)
            ink = resize_bilinear(ink_all[glyph], size, size)
            for _ in range(MAX_TRIES):
                y, x = int(rng.integers(H - size + 1)), int(rng.integers(W - size + 1))
                mask = np.zeros((H, W), bool)
                mask[y : y + size, x : x + size] = ink >= _INK_THRESHOLD
                if stack.fits(mask):
                    window = image[y : y + size, x : x + size]
                    colour = random_colour(rng, window[mask[y : y + size, x : x + size]])
                    alpha = np.clip(ink, 0, 1)[..., None]
                    window[:] = (1 - alpha) * window + alpha * colour
                    stack.add(mask, int(digits[glyph]) + 1)
                    ids.append(glyph)
                    break
        target = stack.target()
        target["digit_ids"] = torch.tensor(ids, dtype=torch.int64)
        return finish(rng, image), target

    def __repr__(self) -> str:
        return (f"DigitScenes(n={self.n}, image_size={self.image_size}, "
                f"objects={self.min_objects}..{self.max_objects}, scale_range={self.scale_range}, "
                f"seed={self.seed}, split={self.split!r})")
