"""What happens to ``(image, target)`` pairs between a dataset and a model: joint augmentation and batching.

A geometric augmentation must move the labels with the pixels: mirroring an image mirrors its boxes,
masks and keypoints, and turns a left wrist into a right wrist (``FLIP_PAIRS``). Detection targets
differ in size per image, so batches keep them as a list (:func:`collate`). Notebooks 04-08.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["hflip", "RandomHorizontalFlip", "collate"]


def hflip(image: Tensor, target: dict[str, Any],
          flip_pairs: Sequence[tuple[int, int]] | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Mirror ``image`` (``Tensor[C, H, W]``) left-right and its target with it; inputs are not modified.

    ``boxes`` ``[N, 4]`` xyxy: ``(W - x2, y1, W - x1, y2)``, exact with the course's pixel convention
    (pixel ``c`` covers ``[c, c + 1)``, so column ``c`` moves to ``W - 1 - c``); ``masks`` ``[N, H, W]``
    and ``semantic`` ``[H, W]`` are mirrored; ``keypoints`` ``[K, 2]`` (or ``[N, K, 2|3]``) get
    ``x -> W - x``, and with ``flip_pairs`` (e.g. ``StickFigures.FLIP_PAIRS``) left and right joints swap
    places, ``visible`` with them. Other entries are copied as they are.
    """
    W = image.shape[-1]
    out = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        out["boxes"] = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], dim=1)
    for key in ("masks", "semantic"):
        if key in target:
            out[key] = target[key].flip(-1)
    if "keypoints" in target:
        keypoints = target["keypoints"].clone()
        keypoints[..., 0] = W - keypoints[..., 0]
        out["keypoints"] = _swap(keypoints, flip_pairs, dim=-2)
        if "visible" in target:
            out["visible"] = _swap(target["visible"].clone(), flip_pairs, dim=-1)
    return image.flip(-1), out


def _swap(x: Tensor, pairs: Sequence[tuple[int, int]] | None, dim: int) -> Tensor:
    """Exchange the entries of each pair along ``dim`` (the joint axis)."""
    if not pairs:
        return x
    order = list(range(x.shape[dim]))
    for i, j in pairs:
        order[i], order[j] = j, i
    return x.index_select(dim, torch.tensor(order))


class RandomHorizontalFlip:
    """Apply :func:`hflip` with probability ``p``; ``generator`` (a seeded ``torch.Generator``) makes the
    coin flips reproducible. Usage: ``image, target = RandomHorizontalFlip(0.5, FLIP_PAIRS)(image, target)``.
    """

    def __init__(self, p: float = 0.5, flip_pairs: Sequence[tuple[int, int]] | None = None,
                 generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p, self.flip_pairs, self.generator = p, flip_pairs, generator

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if torch.rand((), generator=self.generator).item() < self.p:
            return hflip(image, target, self.flip_pairs)
        return image, target


def collate(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[Tensor | list[Tensor], list[dict[str, Any]]]:
    """``DataLoader(..., collate_fn=collate)`` for detection: ``(images, targets)``.

    ``images``: ``Tensor[B, 3, H, W]`` when all images have the same size, else the list of images
    (what torchvision's detectors accept); ``targets``: the list of B target dicts, unchanged.
    """
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    if all(image.shape == images[0].shape for image in images):
        return torch.stack(images), targets
    return images, targets
