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
- :func:`heatmap_loss` / :func:`pose_step`: MSE at every stack, for ``Trainer``.
- :func:`keypoint_rcnn_target` / :func:`keypoint_rcnn_predict`: the same figures for torchvision's
  Keypoint R-CNN (:func:`coursekit.models.torchvision_detection.torchvision_keypoint_rcnn`), the production
  counterpart the notebook fine-tunes and scores with the same PCK.

The datasets (:class:`coursekit.data.HeatmapDataset`, which wraps ``StickFigures`` or
:class:`coursekit.data.CocoKeypoints` into ``(image, target)`` pairs with heatmaps) are in
:mod:`coursekit.data.keypoints`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from coursekit.checks import as_pair

__all__ = [
    "heatmaps",
    "decode_heatmaps",
    "affine_matrix",
    "affine_keypoints",
    "affine_pose",
    "random_affine_pose",
    "inside_image",
    "heatmap_loss",
    "pose_step",
    "keypoint_rcnn_target",
    "keypoint_rcnn_predict",
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


def inside_image(keypoints: Tensor, image_size: Size) -> Tensor:
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
    return warped, moved, visible & inside_image(moved, size)


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


# ----------------------------------------------------------------------------------------------
# Keypoint R-CNN (torchvision): the production counterpart
# ----------------------------------------------------------------------------------------------
def keypoint_rcnn_target(target: dict[str, Any]) -> dict[str, Tensor]:
    """A pose target (``StickFigures``) as torchvision's Keypoint R-CNN wants it.

    Args:
        target: ``{"boxes": Tensor[P, 4] xyxy, "labels": Tensor[P], "keypoints": Tensor[K, 2] or
            Tensor[P, K, 2] (x, y) pixels, "visible": Tensor[K] or Tensor[P, K] bool}``.

    Returns ``{"boxes", "labels", "keypoints": Tensor[P, K, 3]}`` with ``(x, y, visibility)``, visibility 1
    for a visible joint, 0 for one torchvision must ignore (hidden, or outside the image).
    """
    missing = {"boxes", "labels", "keypoints", "visible"} - set(target)
    if missing:
        raise ValueError(f"the target needs {sorted(missing)} (a StickFigures target has them)")
    keypoints, visible = target["keypoints"], target["visible"]
    if keypoints.dim() == 2:  # one person: (K, 2), (K,)
        keypoints, visible = keypoints[None], visible[None]
    if keypoints.shape[0] != target["boxes"].shape[0] or visible.shape != keypoints.shape[:2]:
        raise ValueError(f"keypoints {list(keypoints.shape)}, visible {list(visible.shape)} and boxes "
                         f"{list(target['boxes'].shape)} must describe the same people")
    kp = torch.cat([keypoints.float(), visible.float()[..., None]], dim=-1)  # (P, K, 3)
    return {"boxes": target["boxes"], "labels": target["labels"], "keypoints": kp}


@torch.no_grad()
def keypoint_rcnn_predict(model: nn.Module, images: Tensor | Sequence[Tensor], num_keypoints: int,
                          batch_size: int = 50, device: torch.device | str | None = None) -> Tensor:
    """The keypoints of the most confident person in each image: ``Tensor[N, K, 2]`` (x, y) pixels, on the CPU.

    One person per image, as the stick figures and PCK assume; an image where the model finds nobody gets
    NaN keypoints, which :func:`coursekit.metrics.pck` counts as wrong. ``images``: ``Tensor[N, 3, H, W]``
    or a list of ``Tensor[3, H, W]`` in [0, 1]. Runs in eval mode; the model's mode is restored afterwards.
    """
    from coursekit.train import eval_mode

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = [im.to(dev) for im in images[start:start + batch_size]]
        with eval_mode(model):
            detections = model(batch)
        for det in detections:
            if len(det["scores"]):
                out.append(det["keypoints"][det["scores"].argmax(), :, :2].cpu())  # (K, 2)
            else:
                out.append(torch.full((num_keypoints, 2), float("nan")))
    return torch.stack(out) if out else torch.zeros(0, num_keypoints, 2)
