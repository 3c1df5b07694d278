"""What the network would have delivered, built locally: the online path exercised without a network.

:func:`build` fills a temporary folder with

- torchvision weight files in ``<TORCH_HOME>/hub/checkpoints/`` under their real file names (the URL's
  last part), holding state dicts with the real keys and shapes (the architecture, randomly initialised
  with a fixed seed);
- segmentation-models-pytorch's ResNet-18 ImageNet encoder in the Hugging Face cache layout
  (``models--smp-hub--resnet18.imagenet/snapshots/<the revision smp pins>/``);
- small dataset folders in torchvision's layouts, with generated images: Penn-Fudan
  (``PennFudanPed/PNGImages``, ``PedMasks``), Oxford-IIIT Pet (``oxford-iiit-pet/images``,
  ``annotations/trimaps``, split lists) and PASCAL VOC 2012 (``VOCdevkit/VOC2012``: JPEG images, XML
  annotations, palette segmentation masks, ``ImageSets``).

:func:`environment` gives the variables that point torch, Hugging Face and coursekit at it, with
``COURSEKIT_OFFLINE`` and ``HF_HUB_OFFLINE`` removed, and an IPython startup file that blocks every
non-loopback connection in a notebook kernel (``socket`` raises ``OSError``): a kernel that still reaches
for the network fails loudly instead of downloading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BLOCK_NETWORK = '''\
"""Installed by tests/online_cache.py: no connection leaves this machine (loopback is allowed)."""
import socket

_connect, _create_connection = socket.socket.connect, socket.create_connection


def _loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127.") or host.startswith("/"))


def _blocked_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
        raise OSError(f"network blocked by the test (connect to {address})")
    return _connect(self, address)


def _blocked_create_connection(address, *args, **kwargs):
    if not _loopback(address):
        raise OSError(f"network blocked by the test (create_connection to {address})")
    return _create_connection(address, *args, **kwargs)


socket.socket.connect = _blocked_connect
socket.create_connection = _blocked_create_connection
'''

_PED_SIZE = (96, 80)  # W, H of the generated Penn-Fudan photos
VOC_NAMES = ("person", "dog", "car")


def _torchvision_weights(hub: Path) -> dict[str, str]:
    """resnet18's ImageNet weights under their real name; returns {weights name: file name}."""
    from torchvision.models import ResNet18_Weights, resnet18

    torch.manual_seed(0)
    files = {}
    for weights, build in ((ResNet18_Weights.IMAGENET1K_V1, resnet18),):
        name = weights.url.rsplit("/", 1)[-1]
        model = build(weights=None, num_classes=len(weights.meta["categories"]))
        torch.save(model.state_dict(), hub / "checkpoints" / name)
        files[str(weights)] = name
    return files


def _smp_weights(hf_cache: Path) -> Path:
    """smp's ResNet-18 ImageNet encoder (config.json + model.safetensors) in the Hugging Face cache layout."""
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders
    from torchvision.models import resnet18

    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    repo = hf_cache / f"models--{settings['repo_id'].replace('/', '--')}"
    snapshot = repo / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(settings["revision"])
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in resnet18(weights=None).state_dict().items() if not k.startswith("fc.")}
    save_file(state, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"input_space": "RGB", "input_range": [0, 1],
                                                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    return snapshot


def _photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _penn_fudan(root: Path, n: int, rng: np.random.Generator) -> None:
    folder = root / "PennFudanPed"
    (folder / "PNGImages").mkdir(parents=True)
    (folder / "PedMasks").mkdir()
    w, h = _PED_SIZE
    for i in range(n):
        Image.fromarray(_photo(rng, w, h)).save(folder / "PNGImages" / f"FudanPed{i + 1:05d}.png")
        ids = np.zeros((h, w), dtype=np.uint8)  # 0 = background, k = person k
        ids[10:70, 5:30] = 1
        ids[20:75, 40 + i % 10 : 60 + i % 10] = 2
        Image.fromarray(ids).save(folder / "PedMasks" / f"FudanPed{i + 1:05d}_mask.png")


def _oxford_pet(root: Path, n: int, rng: np.random.Generator) -> None:
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    lines = []
    for i in range(n):
        name = f"Abyssinian_{i + 1}"
        Image.fromarray(_photo(rng, 64, 48)).save(base / "images" / f"{name}.jpg")
        trimap = np.full((48, 64), 2, dtype=np.uint8)  # 1 = pet, 2 = background, 3 = border
        trimap[10:40, 12:50] = 3
        trimap[12:38, 14:48] = 1
        Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
        lines.append(f"{name} 1 1 1")  # image, class id (1-based), species (1 = cat), breed id
    for split in ("trainval", "test"):
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def _voc(root: Path, n: int, rng: np.random.Generator) -> None:
    from coursekit.data.real import VOC_CLASSES

    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    ids = [f"2012_{i:06d}" for i in range(n)]
    palette = [0, 0, 0] * 256
    for k in range(1, 21):
        palette[3 * k : 3 * k + 3] = [k * 12, 255 - k * 12, (k * 40) % 256]
    palette[3 * 255 : 3 * 256] = [224, 224, 192]
    for i, image_id in enumerate(ids):
        Image.fromarray(_photo(rng, 64, 48)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        name = VOC_NAMES[i % len(VOC_NAMES)]
        objects = (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin>"
                   f"<xmax>30</xmax><ymax>40</ymax></bndbox></object>"
                   "<object><name>car</name><difficult>1</difficult><bndbox><xmin>33</xmin><ymin>4</ymin>"
                   "<xmax>60</xmax><ymax>20</ymax></bndbox></object>")
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>64</width><height>48</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[5:40, 4:30] = VOC_CLASSES.index(name)
        mask[4:6, 4:30] = 255  # the border VOC leaves out
        seg = Image.fromarray(mask, mode="P")
        seg.putpalette(palette)
        seg.save(voc / "SegmentationClass" / f"{image_id}.png")
    for sub in ("Main", "Segmentation"):
        for split in ("train", "val", "trainval"):
            (voc / "ImageSets" / sub / f"{split}.txt").write_text("\n".join(ids) + "\n")


def build(root: Path, images: int = 4) -> dict[str, Path]:
    """Fill ``root`` (an empty folder); returns the paths: torch_home, hf_cache, data, ipython."""
    root = Path(root)
    paths = {"torch_home": root / "torch", "hf_cache": root / "hf" / "hub", "data": root / "data",
             "ipython": root / "ipython"}
    (paths["torch_home"] / "hub" / "checkpoints").mkdir(parents=True)
    _torchvision_weights(paths["torch_home"] / "hub")
    _smp_weights(paths["hf_cache"])
    rng = np.random.default_rng(0)
    for make in (_penn_fudan, _oxford_pet, _voc):
        make(paths["data"], images, rng)
    startup = paths["ipython"] / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-block-network.py").write_text(BLOCK_NETWORK)
    return paths


def environment(paths: dict[str, Path], base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) pointed at the cache, with the offline switches removed."""
    env = dict(os.environ if base is None else base)
    for key in ("COURSEKIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    env.update(TORCH_HOME=str(paths["torch_home"]), HF_HUB_CACHE=str(paths["hf_cache"]),
               HF_HOME=str(paths["hf_cache"].parent), IPYTHONDIR=str(paths["ipython"]))
    return env
