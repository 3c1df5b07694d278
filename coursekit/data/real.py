"""Real datasets for lectures with internet: Penn-Fudan, Oxford-IIIT Pet, PASCAL VOC (via torchvision).

Each loader first uses files already under ``root`` (then no network is needed), otherwise downloads.
Offline (``COURSEKIT_OFFLINE=1``, or the server cannot be reached) it raises ONE :class:`OfflineError`
naming the dataset and the generated dataset to use instead, never a cascade of tracebacks.
Items follow the course conventions: image float32 ``Tensor[3, H, W]`` in [0, 1]; detection targets
``{"boxes", "labels", "masks", ...}`` with xyxy boxes ``x2 = last column + 1`` (as :mod:`coursekit.data`).
Notebooks 05 (VOC), 06 (Pet, VOC segmentation), 07 (Penn-Fudan).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from coursekit.data._render import boxes_from_masks
from coursekit.runtime import is_offline, is_reachable

__all__ = [
    "OfflineError",
    "IGNORE_INDEX",
    "PennFudan",
    "VOC_CLASSES",
    "penn_fudan",
    "oxford_pet",
    "voc_detection",
    "voc_segmentation",
    "omniglot",
]

PENN_FUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
_PET_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz"
_OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip"
_PROBE_TIMEOUT = 3.0  # seconds to reach the server before we call it offline
_DOWNLOAD_TIMEOUT = 60.0  # per socket operation: urlopen has none and can hang on a dropping network
IGNORE_INDEX = 255  # "don't care" pixels (object borders) in VOC and Pet masks; pass to cross_entropy
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

T = TypeVar("T")


class OfflineError(RuntimeError):
    """A real dataset was asked for but cannot be downloaded; the message names the offline alternative."""


# --------------------------------------------------------------------------- download guard
def _online(dataset: str, url: str, alternative: str, download: Callable[[], T]) -> T:
    """Run ``download()``; turn every way of being offline into one ``OfflineError``."""

    def error(why: str) -> OfflineError:
        return OfflineError(f"{dataset} needs the internet ({url}), but {why}; "
                            f"offline use {alternative} instead")

    if is_offline():
        raise error("COURSEKIT_OFFLINE is set")
    parsed = urlparse(url)
    if not is_reachable(parsed.hostname or "", parsed.port or 443, _PROBE_TIMEOUT):
        raise error("its server cannot be reached")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT)  # restored below: only this download is affected
    try:
        return download()
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
        raise error(f"the download failed ({type(exc).__name__}: {exc})") from None
    finally:
        socket.setdefaulttimeout(previous)


def _image_tensor(image: Image.Image) -> Tensor:
    """PIL image -> float32 ``Tensor[3, H, W]`` in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / 255.0


def _instance_target(instance_ids: np.ndarray, label: int, image_id: int) -> dict[str, Any]:
    """(H, W) int map of instance ids (0 = background) -> boxes, labels, masks, area, iscrowd, image_id."""
    ids = np.unique(instance_ids)
    ids = ids[ids != 0]
    masks = instance_ids[None] == ids[:, None, None]  # (N, H, W)
    return {
        "boxes": torch.from_numpy(boxes_from_masks(masks)),
        "labels": torch.full((len(ids),), label, dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
        "area": torch.from_numpy(masks.sum((1, 2)).astype(np.float32)),
        "iscrowd": torch.zeros(len(ids), dtype=torch.int64),
        "image_id": image_id,
    }


# --------------------------------------------------------------------------- Penn-Fudan
class PennFudan(Dataset):
    """The Penn-Fudan pedestrians (170 photos, 345 people) with instance masks, from ``root/PennFudanPed``.

    Item ``i``: ``(image Tensor[3, H, W], target)`` with ``boxes`` (tight boxes of the masks, xyxy,
    ``x2 = last column + 1``), ``labels`` (all 1 = pedestrian), ``masks`` uint8 ``[N, H, W]``, ``area``,
    ``iscrowd``, ``image_id``: the target format of :class:`~coursekit.data.Shapes` and of torchvision's
    Mask R-CNN. Build it with :func:`penn_fudan`, which downloads it when needed. Notebook 07.
    """

    CLASSES: tuple[str, ...] = ("background", "pedestrian")

    def __init__(self, root: str | Path) -> None:
        folder = Path(root) / "PennFudanPed"
        self.images = sorted((folder / "PNGImages").glob("*.png"))
        self.masks = [folder / "PedMasks" / f"{p.stem}_mask.png" for p in self.images]
        missing = [m.name for m in self.masks if not m.is_file()]
        if not self.images or missing:
            raise ValueError(f"{folder} is not a complete Penn-Fudan folder (images: {len(self.images)}, "
                             f"missing masks: {missing[:3]}); delete it and call penn_fudan() again")

    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image = _image_tensor(Image.open(self.images[index]))
        instance_ids = np.asarray(Image.open(self.masks[index]))  # 0 = background, k = person k
        return image, _instance_target(instance_ids, label=1, image_id=int(index))


def penn_fudan(root: str | Path = "data") -> PennFudan:
    """Penn-Fudan pedestrians as a :class:`PennFudan` dataset; downloads the zip (~53 MB) into ``root``
    unless ``root/PennFudanPed`` is already there. Offline: :class:`OfflineError`."""
    root = Path(root)
    if not (root / "PennFudanPed" / "PNGImages").is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        _online("Penn-Fudan", PENN_FUDAN_URL,
                "coursekit.data.Shapes(n=..., image_size=128) (instance masks of generated shapes)",
                lambda: download_and_extract_archive(PENN_FUDAN_URL, download_root=str(root)))
    return PennFudan(root)


# --------------------------------------------------------------------------- torchvision datasets, wrapped
def _torchvision(dataset: str, url: str, alternative: str, build: Callable[[bool], T]) -> T:
    """``build(download=False)`` if the files are there, else ``build(download=True)`` behind ``_online``.

    Bad arguments (an unknown split or year) raise torchvision's ``ValueError`` before any download.
    """
    try:
        return build(False)
    except RuntimeError:  # torchvision: "Dataset not found ... use download=True"
        pass  # download outside the except block, so an OfflineError carries no chained traceback
    return _online(dataset, url, alternative, lambda: build(True))


class _Wrapped(Dataset):
    """A torchvision dataset whose ``(PIL image, raw target)`` items are converted by ``convert``."""

    def __init__(self, dataset: Dataset, convert: Callable[[Image.Image, Any, int], tuple[Tensor, Any]],
                 classes: tuple[str, ...]) -> None:
        self.dataset, self.convert, self.CLASSES = dataset, convert, classes

    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, target = self.dataset[index]
        return self.convert(image, target, int(index))


def _pet_item(image: Image.Image, target: Any, index: int) -> tuple[Tensor, dict[str, Any]]:
    category, trimap = target
    trimap = np.asarray(trimap, dtype=np.int64)  # 1 = pet, 2 = background, 3 = border
    semantic = np.select([trimap == 1, trimap == 2], [1, 0], IGNORE_INDEX)
    return _image_tensor(image), {"semantic": torch.from_numpy(semantic), "category": int(category),
                                  "image_id": index}


def oxford_pet(root: str | Path = "data", split: str = "trainval") -> Dataset:
    """Oxford-IIIT Pet (37 breeds, ~7.4k photos) for segmentation, via ``torchvision.datasets.OxfordIIITPet``.

    Item: ``(image Tensor[3, H, W], {"semantic": int64 Tensor[H, W], "category": int, "image_id": int})``;
    ``semantic``: 1 = pet, 0 = background, 255 = border (``IGNORE_INDEX``: leave it out of the loss);
    ``category``: the breed, 0..36. ``CLASSES = ("background", "pet")``. ``split``: "trainval" or "test".
    Downloads ~800 MB into ``root`` unless present. Offline: :class:`OfflineError`. Notebook 06.
    """
    from torchvision.datasets import OxfordIIITPet

    data = _torchvision(
        "Oxford-IIIT Pet", _PET_URL,
        "coursekit.data.Shapes(...) and its target['semantic'] masks",
        lambda download: OxfordIIITPet(str(root), split=split, target_types=("category", "segmentation"),
                                       download=download),
    )
    return _Wrapped(data, _pet_item, ("background", "pet"))


def _omniglot_item(image: Image.Image, target: Any, index: int) -> tuple[Tensor, int]:
    return _image_tensor(image), int(target)


def omniglot(root: str | Path = "data", background: bool = False) -> Dataset:
    """Omniglot (Lake et al., 2015): 1,623 handwritten characters of 50 alphabets, 20 drawers each, via
    ``torchvision.datasets.Omniglot``; the real counterpart of :class:`coursekit.data.Identities`.

    ``background=True``: the 30 alphabets (964 characters) to train on; ``False``: the 20 *other*
    alphabets (659 characters), identities never seen in training. Item: ``(image Tensor[3, 105, 105],
    character id int)``, black strokes on white. Downloads ~10 MB into ``root`` unless present.
    Offline: :class:`OfflineError`. Notebook 10.
    """
    from torchvision.datasets import Omniglot

    data = _torchvision(
        "Omniglot", _OMNIGLOT_URL,
        "coursekit.data.Identities(split='test') (generated glyph identities)",
        lambda download: Omniglot(str(root), background=background, download=download),
    )
    return _Wrapped(data, _omniglot_item, ())


def _voc_url(year: str) -> str:
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    return DATASET_YEAR_DICT.get(str(year), DATASET_YEAR_DICT["2012"])["url"]


def _voc_detection_item(image: Image.Image, target: Any, index: int) -> tuple[Tensor, dict[str, Any]]:
    objects = target["annotation"].get("object", [])
    objects = objects if isinstance(objects, list) else [objects]
    # VOC corners are 1-based and inclusive: x1 = xmin - 1 (0-based first column), x2 = xmax (last + 1).
    boxes = [[float(o["bndbox"][k]) - d for k, d in (("xmin", 1), ("ymin", 1), ("xmax", 0), ("ymax", 0))]
             for o in objects]
    return _image_tensor(image), {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([VOC_CLASSES.index(o["name"]) for o in objects], dtype=torch.int64),
        "difficult": torch.tensor([o.get("difficult", "0") == "1" for o in objects], dtype=torch.bool),
        "image_id": index,
    }


def voc_detection(root: str | Path = "data", year: str = "2012", split: str = "train") -> Dataset:
    """PASCAL VOC detection (20 classes, 11.5k images in 2012) via ``torchvision.datasets.VOCDetection``.

    Item: ``(image Tensor[3, H, W], {"boxes": float32 [N, 4] xyxy, "labels": int64 [N] in 1..20,
    "difficult": bool [N] (left out of VOC AP), "image_id": int})``; ``CLASSES = VOC_CLASSES``.
    ``split``: "train", "trainval", "val" (and "test" for 2007). Downloads ~2 GB unless present.
    Offline: :class:`OfflineError`. Notebook 05.
    """
    from torchvision.datasets import VOCDetection

    data = _torchvision(
        f"PASCAL VOC {year} detection", _voc_url(year),
        "coursekit.data.Shapes(...) or coursekit.data.DigitScenes(...) (generated detection scenes)",
        lambda download: VOCDetection(str(root), year=year, image_set=split, download=download),
    )
    return _Wrapped(data, _voc_detection_item, VOC_CLASSES)


def _voc_segmentation_item(image: Image.Image, target: Any, index: int) -> tuple[Tensor, dict[str, Any]]:
    semantic = torch.from_numpy(np.asarray(target, dtype=np.int64))  # palette indices: 0..20, 255 = border
    return _image_tensor(image), {"semantic": semantic, "image_id": index}


def voc_segmentation(root: str | Path = "data", year: str = "2012", split: str = "train") -> Dataset:
    """PASCAL VOC semantic segmentation via ``torchvision.datasets.VOCSegmentation``.

    Item: ``(image Tensor[3, H, W], {"semantic": int64 Tensor[H, W] in 0..20 or 255 (IGNORE_INDEX,
    object borders), "image_id": int})``; ``CLASSES = VOC_CLASSES``. Downloads ~2 GB unless present.
    Offline: :class:`OfflineError`. Notebook 06.
    """
    from torchvision.datasets import VOCSegmentation

    data = _torchvision(
        f"PASCAL VOC {year} segmentation", _voc_url(year),
        "coursekit.data.Shapes(...) and its target['semantic'] masks",
        lambda download: VOCSegmentation(str(root), year=year, image_set=split, download=download),
    )
    return _Wrapped(data, _voc_segmentation_item, VOC_CLASSES)
