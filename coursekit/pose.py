"""Human pose as heatmaps: Gaussian targets, decoding with the quarter-pixel shift, keypoint augmentation.

Taught in notebook ``08_stacked_hourglass_pose`` (deck 001, Newell et al. 2016). The model is in
:mod:`coursekit.models.hourglass`; PCK / PCKh in :mod:`coursekit.metrics`.

Coordinates follow :mod:`coursekit.data`: a keypoint is a float ``(x, y)`` in pixels and pixel
``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, so its centre is ``(c + 0.5, r + 0.5)``. A heatmap of
``h x w`` cells over an ``H x W`` image gives each cell ``W / w`` by ``H / h`` pixels; cell ``(i, j)`` is
centred at ``((j + 0.5) W / w, (i + 0.5) H / h)``. Everything below uses that one mapping
(``_to_heatmap`` / ``_to_image``), so encoding and decoding are exact inverses.

- :func:`heatmaps`: one 2D Gaussian per joint (peak 1 at the joint, standard deviation ``sigma``
  heatmap cells; the paper uses 1), all zeros for an invisible joint.
- :func:`decode_heatmaps`: the argmax of each heatmap, shifted a quarter cell towards the higher
  of its two neighbours in x and in y (the paper's trick for tight PCK thresholds).
- :func:`affine_pose` / :func:`random_affine_pose`: rotate and scale an image and its keypoints with
  one matrix (torchvision's ``affine`` for the pixels); joints that leave the image turn invisible.
- :class:`HeatmapDataset`: wraps ``StickFigures`` (or :class:`CocoKeypoints`) into ``(image, target)``
  pairs with heatmaps; :func:`heatmap_loss` / :func:`pose_step`: MSE at every stack, for ``Trainer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from coursekit.checks import as_pair
from coursekit.data.real import OfflineError
from coursekit.runtime import is_offline

__all__ = [
    "heatmaps",
    "decode_heatmaps",
    "affine_matrix",
    "affine_keypoints",
    "affine_pose",
    "random_affine_pose",
    "HeatmapDataset",
    "CocoKeypoints",
    "heatmap_loss",
    "pose_step",
    "ROTATION",
    "SCALE",
]

ROTATION = 30.0  # degrees: the paper's augmentation rotates by up to +-30
SCALE = (0.75, 1.25)  # ... and scales by 0.75-1.25
_SUBPIXEL_SHIFT = 0.25  # cells: the paper's quarter-pixel shift towards the higher neighbour

Size = int | tuple[int, int]


def _cell_size(heatmap_size: Size, image_size: Size) -> Tensor:
    """(2,) pixels per heatmap cell along x and y."""
    (h, w), (H, W) = as_pair(heatmap_size, "heatmap_size"), as_pair(image_size, "image_size")
    return torch.tensor([W / w, H / h])


def _to_heatmap(keypoints: Tensor, heatmap_size: Size, image_size: Size) -> Tensor:
    """Image pixels -> heatmap cells (same convention: cell j covers [j, j + 1))."""
    return keypoints / _cell_size(heatmap_size, image_size).to(keypoints)


def _to_image(points: Tensor, heatmap_size: Size, image_size: Size) -> Tensor:
    return points * _cell_size(heatmap_size, image_size).to(points)


def _check_keypoints(keypoints: Tensor, visible: Tensor | None) -> None:
    if keypoints.dim() < 2 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be [..., K, 2] (x, y) pixels, got {list(keypoints.shape)}")
    if visible is not None and visible.shape != keypoints.shape[:-1]:
        raise ValueError(
            f"visible must be [..., K] {list(keypoints.shape[:-1])} like keypoints, got {list(visible.shape)}"
        )


# ----------------------------------------------------------------------------------------------
# Targets and decoding
# ----------------------------------------------------------------------------------------------
def heatmaps(keypoints: Tensor, visible: Tensor | None, heatmap_size: Size, image_size: Size,
             sigma: float = 1.0) -> Tensor:
    """One 2D Gaussian heatmap per joint: the training target of the stacked hourglass.

    Args:
        keypoints (Tensor[..., K, 2]): (x, y) in image pixels; any leading batch dimensions.
        visible (Tensor[..., K] bool or None): invisible joints get an all-zero heatmap (None: all visible).
        heatmap_size: ``(h, w)`` cells (or an int); image_size: ``(H, W)`` pixels (or an int).
        sigma: standard deviation in heatmap cells (the paper: 1).

    Returns:
        Tensor[..., K, h, w] float32: ``exp(-d^2 / (2 sigma^2))`` with ``d`` the distance from a
        cell's centre to the joint, in cells; exactly 1 where the joint sits on a cell centre.
    """
    _check_keypoints(keypoints, visible)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 heatmap cells, got {sigma}")
    h, w = as_pair(heatmap_size, "heatmap_size")
    centre = _to_heatmap(keypoints.float(), heatmap_size, image_size)  # (..., K, 2) in cells
    xs = torch.arange(w, dtype=torch.float32, device=keypoints.device) + 0.5  # cell centres
    ys = torch.arange(h, dtype=torch.float32, device=keypoints.device) + 0.5
    dx2 = (xs - centre[..., 0:1]) ** 2  # (..., K, w)
    dy2 = (ys - centre[..., 1:2]) ** 2  # (..., K, h)
    out = torch.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2 * sigma**2))  # (..., K, h, w)
    if visible is not None:
        out = out * visible[..., None, None].to(out)
    return out


def decode_heatmaps(heatmaps: Tensor, image_size: Size, subpixel: bool = True) -> tuple[Tensor, Tensor]:
    """Joint locations from heatmaps: the argmax cell, optionally shifted a quarter cell.

    Args:
        heatmaps (Tensor[..., K, h, w]): one map per joint (a network's output or :func:`heatmaps`).
        image_size: ``(H, W)`` pixels of the image the heatmaps cover (or an int).
        subpixel: shift the argmax by 0.25 cell towards the higher of its two neighbours, in x and in
            y separately (no shift on a tie or at the border). The argmax alone is off by up to half
            a cell; the shift halves the average error for a Gaussian peak (notebook 08 measures it).

    Returns:
        keypoints (Tensor[..., K, 2]): (x, y) in image pixels; scores (Tensor[..., K]): each map's maximum.
    """
    if heatmaps.dim() < 3:
        raise ValueError(f"heatmaps must be [..., K, h, w], got {list(heatmaps.shape)}")
    *lead, h, w = heatmaps.shape
    maps = heatmaps.detach().reshape(-1, h, w)
    scores, flat = maps.flatten(1).max(dim=1)  # (N,)
    iy, ix = flat // w, flat % w
    points = torch.stack([ix, iy], dim=-1).float() + 0.5  # (N, 2) cell centres
    if subpixel:
        points += _SUBPIXEL_SHIFT * torch.stack([_toward_higher(maps, iy, ix, 0, 1),
                                                 _toward_higher(maps, iy, ix, 1, 0)], dim=-1)
    keypoints = _to_image(points, (h, w), image_size)
    return keypoints.reshape(*lead, 2), scores.reshape(lead)


def _toward_higher(maps: Tensor, iy: Tensor, ix: Tensor, dy: int, dx: int) -> Tensor:
    """(N,) -1, 0 or +1: the sign of (next - previous) neighbour along (dy, dx); 0 at the border."""
    N, h, w = maps.shape
    n = torch.arange(N, device=maps.device)
    inside = (iy - dy >= 0) & (iy + dy < h) & (ix - dx >= 0) & (ix + dx < w)
    nxt = maps[n, (iy + dy).clamp(max=h - 1), (ix + dx).clamp(max=w - 1)]
    prv = maps[n, (iy - dy).clamp(min=0), (ix - dx).clamp(min=0)]
    return torch.sign(nxt - prv).float() * inside


# ----------------------------------------------------------------------------------------------
# Augmentation: one matrix for the pixels and the points
# ----------------------------------------------------------------------------------------------
def affine_matrix(angle: float, scale: float, image_size: Size,
                  translate: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """The 2x3 matrix ``A`` (float64) that torchvision's ``affine`` applies to the pixels.

    A point ``p = (x, y)`` (pixels, y down) moves to ``A @ (x, y, 1)``: rotation by ``angle`` degrees
    (clockwise as seen on the screen, as torchvision's ``affine``) and scaling by ``scale`` about the
    image centre ``(W / 2, H / 2)``, then a shift by ``translate`` pixels.
    """
    H, W = as_pair(image_size, "image_size")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    a = math.radians(angle)
    # The textbook rotation matrix; with y pointing down it turns points clockwise on the screen.
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64) * scale
    centre = torch.tensor([W / 2, H / 2], dtype=torch.float64)
    shift = centre - rot @ centre + torch.tensor(translate, dtype=torch.float64)
    return torch.cat([rot, shift[:, None]], dim=1)  # (2, 3)


def affine_keypoints(keypoints: Tensor, matrix: Tensor) -> Tensor:
    """Apply a 2x3 ``matrix`` to keypoints ``Tensor[..., K, 2]`` (pixels); returns the same shape."""
    _check_keypoints(keypoints, None)
    m = matrix.to(torch.float64)
    out = keypoints.to(torch.float64) @ m[:, :2].T + m[:, 2]
    return out.to(keypoints.dtype)


def _inside(keypoints: Tensor, image_size: Size) -> Tensor:
    H, W = as_pair(image_size, "image_size")
    x, y = keypoints[..., 0], keypoints[..., 1]
    return (x >= 0) & (x < W) & (y >= 0) & (y < H)


def affine_pose(image: Tensor, keypoints: Tensor, visible: Tensor, angle: float, scale: float,
                translate: tuple[float, float] = (0.0, 0.0)) -> tuple[Tensor, Tensor, Tensor]:
    """Rotate / scale / shift an image and its keypoints together.

    Args:
        image (Tensor[C, H, W]): warped by ``torchvision.transforms.v2.functional.affine`` (bilinear,
            zeros outside); keypoints (Tensor[K, 2]) and visible (Tensor[K] bool): moved by the same
            :func:`affine_matrix`.

    Returns:
        ``(image, keypoints, visible)``; a joint that lands outside the image becomes invisible.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got {list(image.shape)}")
    _check_keypoints(keypoints, visible)
    size = tuple(image.shape[-2:])
    warped = TF.affine(image, angle=angle, translate=list(translate), scale=scale, shear=[0.0, 0.0],
                       interpolation=InterpolationMode.BILINEAR)
    moved = affine_keypoints(keypoints, affine_matrix(angle, scale, size, translate))
    return warped, moved, visible & _inside(moved, size)


def random_affine_pose(image: Tensor, keypoints: Tensor, visible: Tensor, rotation: float = ROTATION,
                       scale: tuple[float, float] = SCALE,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`affine_pose` with an angle uniform in ``[-rotation, rotation]`` degrees and a scale
    uniform in ``scale`` (the paper: +-30 degrees, 0.75-1.25)."""
    if rotation < 0 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"need rotation >= 0 and 0 < scale[0] <= scale[1], got {rotation}, {scale}")
    u = torch.rand(2, generator=generator).tolist()
    angle = (2 * u[0] - 1) * rotation
    factor = scale[0] + u[1] * (scale[1] - scale[0])
    return affine_pose(image, keypoints, visible, angle, factor)


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------
class HeatmapDataset(Dataset):
    """``(image, target)`` pairs for a heatmap network, built from a keypoint dataset.

    ``dataset[i]`` must give ``(image Tensor[3, H, W], {"keypoints": [K, 2], "visible": [K], "torso",
    "head"})``, as :class:`coursekit.data.StickFigures` and :class:`CocoKeypoints` do. Items are
    ``(image, {"heatmaps": Tensor[K, h, w], "keypoints", "visible", "torso", "head"})``, all tensors,
    so the default ``DataLoader`` collate stacks them. With ``augment=True`` each access draws a new
    :func:`random_affine_pose` (from ``generator``, else torch's global generator); torso and head
    sizes are scaled with the image.
    """

    def __init__(self, dataset: Dataset, heatmap_size: Size, sigma: float = 1.0, augment: bool = False,
                 rotation: float = ROTATION, scale: tuple[float, float] = SCALE,
                 generator: torch.Generator | None = None):
        self.dataset, self.heatmap_size, self.sigma = dataset, as_pair(heatmap_size, "heatmap_size"), sigma
        self.augment, self.rotation, self.scale, self.generator = augment, rotation, scale, generator

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, target = self.dataset[index]
        keypoints, visible = target["keypoints"].float(), target["visible"].bool()
        torso, head = float(target["torso"]), float(target["head"])
        if self.augment:
            before = keypoints
            image, keypoints, visible = random_affine_pose(image, keypoints, visible, self.rotation,
                                                           self.scale, self.generator)
            factor = _scale_of(before, keypoints)
            torso, head = torso * factor, head * factor
        hm = heatmaps(keypoints, visible, self.heatmap_size, tuple(image.shape[-2:]), self.sigma)
        return image, {"heatmaps": hm, "keypoints": keypoints, "visible": visible,
                       "torso": torch.tensor(torso), "head": torch.tensor(head)}


def _scale_of(before: Tensor, after: Tensor) -> float:
    """The scale factor of a similarity that maps ``before`` (K, 2) to ``after``: ratio of spreads."""
    spread = (before - before.mean(0)).norm()
    return float((after - after.mean(0)).norm() / spread) if spread > 0 else 1.0


class CocoKeypoints(Dataset):
    """Real people: COCO person keypoints through ``torchvision.datasets.CocoDetection``, one person a
    crop, behind the same interface as :class:`coursekit.data.StickFigures`.

    Item ``i``: ``(image Tensor[3, S, S], {"keypoints": [17, 2], "visible": [17] bool, "torso", "head"})``,
    the ``i``-th annotated person (at least ``min_keypoints`` labelled joints) cropped to a square
    around their box (``padding`` x its longer side) and resized to ``image_size`` S. ``torso``: the
    distance between the mean of the shoulders and the mean of the hips; ``head``: the distance between
    the ears (COCO has no head box: a stand-in for PCKh's normaliser).

    COCO is not downloaded here: ``root`` (the images) and ``ann_file``
    (``person_keypoints_*.json``) must exist, from https://cocodataset.org. Without them (offline in
    particular) the constructor raises one ``FileNotFoundError`` that names ``StickFigures`` as the
    offline alternative.
    """

    KEYPOINTS: tuple[str, ...] = (
        "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
        "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
    )  # fmt: skip
    SKELETON: tuple[tuple[int, int], ...] = (
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
        (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    )  # fmt: skip
    FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14),
                                               (15, 16))

    def __init__(self, root: str | Path, ann_file: str | Path, image_size: int = 64, min_keypoints: int = 8,
                 padding: float = 1.25):
        root, ann_file = Path(root), Path(ann_file)
        if not (root.is_dir() and ann_file.is_file()):
            # COCO (19 GB) is never downloaded for you: offline this is the data module's OfflineError.
            error = OfflineError if is_offline() else FileNotFoundError
            raise error(
                f"no COCO keypoints at {root} / {ann_file}: download train2017 (or val2017) and "
                "person_keypoints_*.json from https://cocodataset.org, or use coursekit.data.StickFigures "
                "(generated, works offline) instead"
            )
        from torchvision.datasets import CocoDetection  # imported here: pycocotools loads the json

        self.coco = CocoDetection(str(root), str(ann_file))
        self.image_size, self.padding = as_pair(image_size, "image_size")[0], padding
        self.people = [
            (i, a) for i, image_id in enumerate(self.coco.ids)
            for a in self.coco.coco.imgToAnns[image_id]
            if a.get("num_keypoints", 0) >= min_keypoints and not a.get("iscrowd", 0)
        ]  # fmt: skip

    def __len__(self) -> int:
        return len(self.people)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        i, ann = self.people[index]
        pil, _ = self.coco[i]
        kp = torch.tensor(ann["keypoints"], dtype=torch.float32).reshape(-1, 3)
        x, y, w, h = ann["bbox"]
        side = max(w, h) * self.padding
        left, top = x + w / 2 - side / 2, y + h / 2 - side / 2
        S = self.image_size
        image = TF.resized_crop(TF.to_image(pil), round(top), round(left), round(side), round(side), [S, S],
                                antialias=True)
        image = TF.to_dtype(image, torch.float32, scale=True)
        # COCO's keypoints are integer pixel indices: +0.5 puts them at the pixel centre (our convention).
        keypoints = (kp[:, :2] + 0.5 - torch.tensor([round(left), round(top)])) * (S / round(side))
        visible = (kp[:, 2] > 0) & _inside(keypoints, S)
        return image, {"keypoints": keypoints, "visible": visible,
                       "torso": _torso(keypoints), "head": float((keypoints[3] - keypoints[4]).norm())}


def _torso(kp: Tensor) -> float:
    return float((kp[[5, 6]].mean(0) - kp[[11, 12]].mean(0)).norm())


# ----------------------------------------------------------------------------------------------
# Loss and training step
# ----------------------------------------------------------------------------------------------
def heatmap_loss(outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
    """MSE between every stack's heatmaps and the target, summed over stacks (intermediate supervision).

    Args:
        outputs: ``Tensor[B, K, h, w]`` or a list of them, one per stack (``StackedHourglass`` output).
        target (Tensor[B, K, h, w]): from :func:`heatmaps`.
    """
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    for o in outs:
        if o.shape != target.shape:
            raise ValueError(f"predicted heatmaps {list(o.shape)} and target {list(target.shape)} differ")
    return sum(F.mse_loss(o, target) for o in outs)  # type: ignore[return-value]


def pose_step(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
    """``Trainer`` step for a heatmap network: ``batch = (images, targets)`` from :class:`HeatmapDataset`.

    Logs ``loss`` (summed over stacks) and ``loss_last`` (the last stack's MSE: comparable across
    stack counts).
    """
    images, targets = batch
    target = targets["heatmaps"].to(device)
    outputs = model(images.to(device))
    outs = [outputs] if isinstance(outputs, Tensor) else outputs
    return {"loss": heatmap_loss(outs, target), "loss_last": F.mse_loss(outs[-1].detach(), target)}
