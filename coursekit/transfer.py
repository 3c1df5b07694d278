"""Transfer learning: which layers of a pretrained ResNet to freeze, re-initialise or fine-tune.

Taught in notebook 01. Deck 000's 2x2 table, {small, rich} target data x {similar, different} domain:

=============  ==================================  ==========================================
               similar domain                      different domain
=============  ==================================  ==========================================
small dataset  replace the last linear layer       hard: re-initialise / fine-tune larger
               (``"linear_probe"``)                parts, augment (``"reinit_top"``)
rich dataset   fine-tune the last few layers       fine-tune many layers (``"finetune_all"``)
               (``"finetune_top"``)
=============  ==================================  ==========================================

plus ``"scratch"``: the same network from random weights, the baseline every regime must beat.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from torchvision.models import ResNet

from coursekit.train import frozen_to_eval  # re-exported: notebook 01 teaches it here
from coursekit.weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Regime",
    "REGIMES",
    "DECK_TABLE",
    "BLOCKS",
    "prepare",
    "block_summary",
    "frozen_to_eval",
    "target_task",
    "TASKS",
    "make_step",
    "accuracy",
    "run_regime",
]

Regime = Literal["scratch", "linear_probe", "finetune_top", "reinit_top", "finetune_all"]
REGIMES: tuple[str, ...] = get_args(Regime)
# (dataset size, domain) -> the regime deck 000 recommends
DECK_TABLE: dict[tuple[str, str], str] = {
    ("small", "similar"): "linear_probe",
    ("rich", "similar"): "finetune_top",
    ("small", "different"): "reinit_top",
    ("rich", "different"): "finetune_all",
}
# A torchvision ResNet from input to output, as the blocks the regimes freeze or train.
BLOCKS: tuple[str, ...] = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
_TRAINABLE: dict[str, tuple[str, ...]] = {
    "scratch": BLOCKS,
    "linear_probe": ("fc",),
    "finetune_top": ("layer4", "fc"),
    "reinit_top": ("layer3", "layer4", "fc"),
    "finetune_all": BLOCKS,
}
_REINIT: dict[str, tuple[str, ...]] = {"reinit_top": ("layer4",)}


def _reset(module: nn.Module) -> None:
    """Fresh random weights (and BatchNorm statistics) for every layer inside ``module``."""
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()


def prepare(model: ResNet, regime: Regime, num_classes: int) -> ResNet:
    """Set up a (pretrained) torchvision ResNet for ``regime`` on a ``num_classes`` target task, in place.

    Always replaces ``fc`` by a fresh ``Linear(in_features, num_classes)``. Then freezes
    (``requires_grad=False``) every block not trained by the regime and, for ``"reinit_top"``,
    re-initialises ``layer4`` (its pretrained features are the most source-specific). Returns the model.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {REGIMES}")
    if not isinstance(model, ResNet):
        raise ValueError(f"expected a torchvision ResNet, got {type(model).__name__}")
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    for name in _REINIT.get(regime, ()):
        _reset(getattr(model, name))
    trainable = _TRAINABLE[regime]
    for name in BLOCKS:
        getattr(model, name).requires_grad_(name in trainable)
    return model


def block_summary(model: ResNet) -> list[tuple[str, int, bool]]:
    """(block, parameters, trainable) for each block of :data:`BLOCKS`, input to output."""
    rows = []
    for name in BLOCKS:
        params = list(getattr(model, name).parameters())
        rows.append((name, sum(p.numel() for p in params), any(p.requires_grad for p in params)))
    return rows


TASKS: tuple[str, ...] = ("shapes", "digits")


def _normalise(images: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _shapes(n_per_class: int, image_size: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    """Single shapes on textured backgrounds: which kind is it? The Shapes source task's own distribution.

    Objects keep the source task's size relative to the image, so "similar" means similar: at 32 px these
    are new draws of exactly the images coursekit's backbone was pretrained on.
    """
    from coursekit.data import Shapes
    from coursekit.data.shapes import single_shapes

    num_classes = len(Shapes.CLASSES) - 1
    # Seeds other than the source task's (0), one per split: neither training nor test scene was seen before.
    data = single_shapes(n_per_class * num_classes * 3, image_size, seed=seed + (1000 if split == "test" else 500))
    images, labels, counts = [], [], np.zeros(num_classes, dtype=int)
    for i in range(len(data)):
        image, target = data[i]
        label = int(target["labels"][0]) - 1
        if counts[label] < n_per_class:
            images.append(image)
            labels.append(label)
            counts[label] += 1
        if counts.min() >= n_per_class:
            break
    return torch.stack(images), torch.tensor(labels)


def _digits(n_per_class: int, image_size: int, split: str, seed: int) -> tuple[Tensor, Tensor]:
    """Real handwritten digits (scikit-learn's 8x8 set), upsampled, white ink on black: a different domain."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = torch.tensor(bunch.target)
    # Fixed split by index: the first 1200 for training, the rest for testing (never mixed).
    idx = torch.arange(len(labels))
    idx = idx[:1200] if split == "train" else idx[1200:]
    g = torch.Generator().manual_seed(seed)
    chosen = torch.cat([idx[labels[idx] == c][torch.randperm(int((labels[idx] == c).sum()), generator=g)][
        :n_per_class] for c in range(10)])
    x = nn.functional.interpolate(images[chosen, None], size=(image_size, image_size), mode="bilinear",
                                  align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous(), labels[chosen]


def target_task(name: str, n_per_class: int, image_size: int = 64, split: str = "train",
                seed: int = 0) -> TensorDataset:
    """A small labelled target task as a ``TensorDataset`` of (image Tensor[3, S, S] normalised, label).

    ``"shapes"``: 6 shape kinds, the domain of coursekit's own pretraining. ``"digits"``: 10 real
    handwritten digits, a different domain for both ImageNet and Shapes backbones. ``n_per_class``
    labelled examples per class (the x-axis of the learning curve); ``split`` "train" or "test" never overlap.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    maker = _shapes if name == "shapes" else _digits
    images, labels = maker(n_per_class, image_size, split, seed)
    return TensorDataset(_normalise(images), labels)


_LR: dict[str, float] = {  # Adam learning rates: pretrained layers need smaller steps than new ones
    "scratch": 1e-3,
    "linear_probe": 1e-2,
    "finetune_top": 1e-3,
    "reinit_top": 1e-3,
    "finetune_all": 3e-4,
}


def _augment(images: Tensor) -> Tensor:
    """Small random shifts, rotations and scalings, one draw per image (no flips: a flipped 2 is no 2)."""
    from torchvision.transforms import v2

    jitter = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
    return torch.stack([jitter(image) for image in images])


def make_step(augment: bool = False):
    """A training step for :class:`coursekit.train.Trainer`: cross-entropy, frozen BatchNorm kept in eval."""
    from coursekit.train import classification_step

    def step(model: nn.Module, batch, device) -> dict[str, Tensor]:
        frozen_to_eval(model)
        images, labels = batch
        if augment:
            images = _augment(images)
        return classification_step(model, (images, labels), device)

    return step


@torch.no_grad()
def accuracy(
    model: nn.Module, data: TensorDataset, device: torch.device | str, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` on a ``TensorDataset`` of (images, labels)."""
    model.eval()
    images, labels = data.tensors
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(images[i : i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / len(labels)


def run_regime(
    model: ResNet,
    regime: Regime,
    train: TensorDataset,
    test: TensorDataset,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Prepare ``model`` for ``regime``, train ``steps`` optimiser steps on ``train``, measure on ``test``.

    ``model`` is a ResNet with the weights to start from (pretrained, or random for ``"scratch"``); it is
    modified in place. Returns ``{"test_acc", "train_acc", "trainable", "seconds"}``.
    """
    import math
    import time

    from torch.utils.data import DataLoader

    from coursekit.train import count_parameters, fit

    num_classes = int(train.tensors[1].max()) + 1
    prepare(model, regime, num_classes)
    loader = DataLoader(train, batch_size=min(batch_size, len(train)), shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    fit(model, loader, epochs=math.ceil(steps / len(loader)), lr=lr or _LR[regime],
        step=make_step(augment=regime == "reinit_top"), max_steps=steps, device=device, progress=False)
    seconds = time.perf_counter() - start
    return {
        "test_acc": accuracy(model, test, device),
        "train_acc": accuracy(model, train, device),
        "trainable": count_parameters(model, trainable_only=True),
        "seconds": seconds,
    }
