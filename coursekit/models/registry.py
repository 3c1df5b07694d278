"""One table of every network of the course: ``create_model(name, ...)``, ``list_models()`` (timm's pattern).

Each model file registers its networks at its end with :func:`register_model`, giving a builder, the
family (the file, which is also the notebook's topic) and a :class:`Smoke` spec: a tiny configuration,
a tiny CPU input and the output shapes it must give. ``tests/test_models.py`` builds every registered
model from its spec, runs a forward and a backward pass and checks the shapes, so a new model joins the
test suite by registering::

    register_model("unet", UNet, family="segmentation",
                   smoke=Smoke({"num_classes": 3, "widths": (4, 8, 8, 8, 8)}, images(3, 32), [(2, 3, 32, 32)]))

Unknown names are answered with the valid ones, as segmentation-models-pytorch does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Smoke", "ModelEntry", "register_model", "list_models", "create_model", "model_entry", "images"]


@dataclass(frozen=True)
class Smoke:
    """How to smoke-test a registered model on a CPU in well under a second."""

    kwargs: dict[str, Any]  # a tiny configuration, passed to the builder
    inputs: Callable[[torch.Generator], tuple]  # generator -> the positional arguments of forward
    shapes: Sequence[tuple[int, ...]]  # expected shapes of the output tensors, flattened in order
    train: bool = True  # run forward in train mode (detectors: False gives detections, not losses)


@dataclass(frozen=True)
class ModelEntry:
    """One registered network."""

    name: str
    build: Callable[..., nn.Module]
    family: str  # the model file, e.g. "segmentation", "ssd"
    smoke: Smoke | None = field(default=None, repr=False)


_REGISTRY: dict[str, ModelEntry] = {}


def images(channels: int, size: int, batch: int = 2) -> Callable[[torch.Generator], tuple]:
    """A :class:`Smoke` input: one random ``Tensor[batch, channels, size, size]``."""
    return lambda g: (torch.rand(batch, channels, size, size, generator=g),)


def register_model(name: str, build: Callable[..., nn.Module], *, family: str, smoke: Smoke | None = None) -> None:
    """Make ``build(*args, **kwargs) -> nn.Module`` available as ``create_model(name, ...)``."""
    if name in _REGISTRY:
        raise ValueError(f"a model named {name!r} is already registered (family {_REGISTRY[name].family!r})")
    _REGISTRY[name] = ModelEntry(name, build, family, smoke)


def list_models(family: str | None = None) -> list[str]:
    """Registered names (of one ``family``, e.g. ``"segmentation"``), in the order the course meets them."""
    _load_families()
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``; ``ValueError`` listing the valid names otherwise."""
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    return _REGISTRY[name]


def create_model(name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` (one of :func:`list_models`); arguments go to its builder,
    e.g. ``create_model("unet", num_classes=7)``, ``create_model("ssd", num_classes=10, fpn=True)``."""
    return model_entry(name).build(*args, **kwargs)


def _load_families() -> None:
    import coursekit.models  # noqa: F401  (importing the package imports, and so registers, every family)
