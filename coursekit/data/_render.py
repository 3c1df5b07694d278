"""Shared machinery of the generated datasets: backgrounds, colours, occlusion bookkeeping, targets.

Not public: :mod:`coursekit.data.shapes`, :mod:`~coursekit.data.digits` and
:mod:`~coursekit.data.stick_figures` build on it. Everything works on NumPy arrays (``H x W x 3``
float32 images in [0, 1], ``H x W`` bool masks) and converts to torch once, at the end of an item.

Pixel convention shared by every dataset (and by torchvision's ``roi_align(aligned=True)``):
pixel ``(row r, col c)`` covers the square ``[c, c + 1) x [r, r + 1)`` of the continuous plane, so
its centre is ``(c + 0.5, r + 0.5)``. A box is ``(x1, y1, x2, y2) = (first col, first row,
last col + 1, last row + 1)`` of its mask: ``(x2 - x1) * (y2 - y1)`` is the mask's extent in pixels.
(``torchvision.ops.masks_to_boxes`` returns ``last col`` / ``last row`` instead: one pixel less.)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

Background = Literal["texture", "noise", "plain"]
BACKGROUNDS: tuple[str, ...] = get_args(Background)

MIN_IMAGE_SIZE = 32  # smaller scenes cannot hold an object of the smallest useful size (~12 px)
# An earlier object must keep this share of its own area visible once later objects are drawn over it;
# a new object that would break the rule is re-drawn elsewhere (see SceneStack).
MIN_VISIBLE = 0.4
MAX_TRIES = 30  # placements tried per object before the slot is left empty
MIN_CONTRAST = 0.35  # RGB distance between an object's colour and the background under it
PIXEL_NOISE = 0.02  # std of the sensor noise added to every finished image
_TEXTURES = ("brick", "grass", "gravel")


# --------------------------------------------------------------------------- argument checks
def check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_image_size(image_size: Any) -> tuple[int, int]:
    """``int`` or ``(H, W)`` -> ``(H, W)``; both sides at least ``MIN_IMAGE_SIZE``."""
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in size):
        raise ValueError(f"image_size must be an int or a pair (H, W) of ints, got {image_size!r}")
    if min(size) < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels a side, got {image_size!r}")
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------- resizing and textures
@lru_cache(maxsize=256)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, ``align_corners=False`` (as ``F.interpolate``); rows sum to 1."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), 1 - w)
    np.add.at(m, (np.arange(n_out), i1), w)
    return m


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an ``h x w`` or ``h x w x C`` float array as two small matrix products.

    Same numbers as ``F.interpolate(mode="bilinear", align_corners=False)`` (no anti-aliasing),
    and fast for the tiny images used here (8x8 digits, coarse noise grids).
    """
    ry = _interp_matrix(height, img.shape[0])
    rx = _interp_matrix(width, img.shape[1])
    if img.ndim == 2:
        return ry @ img.astype(np.float32) @ rx.T
    return np.einsum("yh,hwc,xw->yxc", ry, img.astype(np.float32), rx, optimize=True)


@lru_cache(maxsize=1)
def _real_textures() -> tuple[np.ndarray, ...]:
    """scikit-image's grey textures (512 x 512), float32 rescaled to [0, 1]; shipped in the wheel."""
    import skimage.data

    out = []
    for name in _TEXTURES:
        t = getattr(skimage.data, name)().astype(np.float32)
        out.append((t - t.min()) / (t.max() - t.min()))
    return tuple(out)


def _texture_crop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a real texture, randomly zoomed out (stride), flipped and transposed: (H, W)."""
    tex = _real_textures()[rng.integers(len(_TEXTURES))]
    if rng.random() < 0.5:
        tex = tex.T
    stride = int(rng.integers(1, 3))
    tex = tex[::stride, ::stride]
    if tex.shape[0] < height or tex.shape[1] < width:  # larger than the texture: stretch it
        return resize_bilinear(tex, height, width)
    y = rng.integers(tex.shape[0] - height + 1)
    x = rng.integers(tex.shape[1] - width + 1)
    crop = tex[y : y + height, x : x + width]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _value_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random blobs: a coarse grid of uniform noise upsampled bilinearly, (H, W) in [0, 1]."""
    cells = int(rng.integers(2, 12))
    return resize_bilinear(rng.random((cells, cells), dtype=np.float32), height, width)


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear ramp in a random direction, (H, W) in [0, 1]."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.cos(angle) * xs + np.sin(angle) * ys
    return (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)


def background(rng: np.random.Generator, height: int, width: int, kind: str = "texture") -> np.ndarray:
    """A random background, float32 ``H x W x 3`` in [0, 1].

    ``"plain"``: one colour. ``"noise"``: a random mix of a gradient and smooth value noise between
    two colours. ``"texture"``: like ``"noise"`` half of the time, otherwise a crop of a real grey
    texture (scikit-image brick / grass / gravel) tinted between two colours.
    """
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}")
    lo, hi = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
    if kind == "plain":
        return np.broadcast_to(lo, (height, width, 3)).copy()
    if kind == "texture" and rng.random() < 0.5:
        t = _texture_crop(rng, height, width)
    else:
        mix = rng.random()
        t = mix * _gradient(rng, height, width) + (1 - mix) * _value_noise(rng, height, width)
    contrast = rng.uniform(0.3, 1.0)  # how far the two colours are apart: from faint to strong patterns
    hi = lo + contrast * (hi - lo)
    return lo + (hi - lo) * t[..., None]


def random_colour(rng: np.random.Generator, under: np.ndarray, tries: int = 10) -> np.ndarray:
    """An RGB colour (float32, 3) at least ``MIN_CONTRAST`` away from the mean of ``under`` (..., 3),
    or the farthest of ``tries`` candidates: objects must be visible on their background."""
    mean = under.reshape(-1, 3).mean(0)
    best, best_dist = None, -1.0
    for _ in range(tries):
        colour = rng.random(3, dtype=np.float32)
        dist = float(np.linalg.norm(colour - mean))
        if dist >= MIN_CONTRAST:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def finish(rng: np.random.Generator, image: np.ndarray) -> Tensor:
    """Add sensor noise, clip to [0, 1], and convert ``H x W x 3`` -> float32 ``Tensor[3, H, W]``."""
    image = image + PIXEL_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    np.clip(image, 0, 1, out=image)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


# --------------------------------------------------------------------------- occlusion and targets
class SceneStack:
    """Objects in drawing order (later ones in front), with the visible part of each.

    :meth:`fits` is the occlusion rule: a new object is accepted only if every earlier object keeps
    at least ``MIN_VISIBLE`` of its own area visible. So no object is ever almost fully hidden,
    nothing has to be dropped afterwards, and boxes, labels and masks always agree.
    """

    def __init__(self, height: int, width: int, min_visible: float = MIN_VISIBLE) -> None:
        self.shape = (height, width)
        self.min_visible = min_visible
        self.visible: list[np.ndarray] = []  # (H, W) bool each
        self.areas: list[int] = []
        self.labels: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def fits(self, mask: np.ndarray) -> bool:
        if not mask.any():
            return False
        return all(
            np.count_nonzero(vis & ~mask) >= self.min_visible * area
            for vis, area in zip(self.visible, self.areas, strict=True)
        )

    def add(self, mask: np.ndarray, label: int) -> None:
        for vis in self.visible:
            vis &= ~mask
        self.visible.append(mask.copy())
        self.areas.append(int(np.count_nonzero(mask)))
        self.labels.append(label)

    def target(self) -> dict[str, Tensor]:
        """The detection target of the stack: boxes, labels, masks, semantic, area, iscrowd."""
        H, W = self.shape
        masks = np.stack(self.visible) if self.visible else np.zeros((0, H, W), bool)
        labels = np.asarray(self.labels, dtype=np.int64)
        semantic = np.zeros((H, W), np.int64)
        for mask, label in zip(masks, labels, strict=True):  # visible masks are disjoint
            semantic[mask] = label
        return {
            "boxes": torch.from_numpy(boxes_from_masks(masks)),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
            "semantic": torch.from_numpy(semantic),
            "area": torch.from_numpy(masks.sum((1, 2)).astype(np.float32)),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
        }


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 xyxy: ``(first col, first row, last col + 1, last row + 1)``."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for k, mask in enumerate(masks):
        cols = np.flatnonzero(mask.any(0))
        rows = np.flatnonzero(mask.any(1))
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


# --------------------------------------------------------------------------- the dataset skeleton
class SceneDataset(Dataset):
    """A lazily generated dataset: item ``i`` is a pure function of ``(seed, i)``.

    Subclasses set ``CLASSES`` and ``_SALT`` and implement ``_generate(rng) -> (image, target)``; this
    class checks the common arguments, turns an index into ``numpy.random.default_rng((seed, _SALT, i))``
    and stamps ``image_id``. No state changes between items, so DataLoader workers need no seeding.
    """

    CLASSES: tuple[str, ...] = ("background",)
    # Distinct per dataset class, so that Shapes(seed=0)[i] and DigitScenes(seed=0)[i] do not share
    # a background (the background is the first thing drawn from the item's generator).
    _SALT = 0

    def __init__(self, n: int, image_size: int | tuple[int, int], seed: int) -> None:
        self.n = check_count("n", n)
        self.height, self.width = check_image_size(image_size)
        self.seed = check_count("seed", seed, minimum=0)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (``len(CLASSES)``), as torchvision's detectors count."""
        return len(self.CLASSES)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.height, self.width

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} items")
        image, target = self._generate(np.random.default_rng((self.seed, self._SALT, int(index))))
        target["image_id"] = int(index)
        return image, target

    def _generate(self, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, image_size={self.image_size}, seed={self.seed})"
