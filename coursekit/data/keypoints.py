"""Keypoint datasets for pose estimation (notebook 08): heatmap targets around any keypoint dataset, and
real people from COCO behind the interface of :class:`coursekit.data.StickFigures`.

- :class:`HeatmapDataset`: ``dataset[i] = (image, {"keypoints", "visible", "torso", "head"})`` ->
  ``(image, {"heatmaps": Tensor[K, h, w], ...})``, with the paper's random rotation and scaling.
- :class:`CocoKeypoints`: COCO person keypoints, one person a square crop; never downloaded.

Heatmaps, decoding and augmentation themselves are in :mod:`coursekit.pose`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset

from coursekit.checks import as_pair
from coursekit.data.real import OfflineError
from coursekit.pose import ROTATION, SCALE, Size, heatmaps, inside_image, random_affine_pose
from coursekit.runtime import is_offline

__all__ = ["HeatmapDataset", "CocoKeypoints"]


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
        visible = (kp[:, 2] > 0) & inside_image(keypoints, S)
        return image, {"keypoints": keypoints, "visible": visible,
                       "torso": _torso(keypoints), "head": float((keypoints[3] - keypoints[4]).norm())}


def _torso(kp: Tensor) -> float:
    return float((kp[[5, 6]].mean(0) - kp[[11, 12]].mean(0)).norm())
