"""Pretrained weights: the real ones when we can get them, an honest home-made substitute when not.

In a lecture with internet the notebooks use torchvision's ImageNet / COCO weights and
segmentation-models-pytorch's ImageNet encoders. Offline (no network, or ``COURSEKIT_OFFLINE=1``, which
CI sets) nothing may be downloaded, so coursekit pretrains the *same architecture* (ResNet-18) itself on a
source task built from its own generated data (:class:`coursekit.data.Shapes`: name the one shape in
the picture, an ImageNet in miniature), deterministically, caches it in the user's cache folder and loads it with
``weights_only=True``. Every fallback prints exactly one line saying what it fell back to.

Taught in notebook 01 (transfer learning); used by 04-07 for their backbones.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, WeightsEnum, resnet18

from coursekit.runtime import is_offline, is_reachable

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Source",
    "cache_dir",
    "is_online",
    "is_cached",
    "available",
    "resnet18_backbone",
    "coursekit_resnet18",
    "pretrain_resnet18",
    "load_backbone_weights",
    "smp_encoder_weights",
    "smp_weights_cached",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Source = Literal["imagenet", "coursekit-shapes", "random"]

# The source task of the offline backbone. Changing any of these changes the weights: bump the version.
# Measured (2 CPU threads): 600 steps take ~100 s and name the shape in 83% of held-out images (chance 17%);
# 120 steps at 64 px stayed at chance. Small images buy steps: a ResNet trained from scratch needs many.
_PRETRAIN_VERSION = 2
_PRETRAIN_STEPS = 600
_PRETRAIN_BATCH = 64
_PRETRAIN_SIZE = 32
_PRETRAIN_LR = 2e-3
_PRETRAIN_SEED = 0
_PROBE_HOST = ("download.pytorch.org", 443)


def cache_dir() -> Path:
    """Where coursekit keeps what it computes once: ``$COURSEKIT_CACHE`` or ``~/.cache/coursekit``."""
    root = os.environ.get("COURSEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "coursekit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_online(timeout: float = 2.0) -> bool:
    """Can we reach the weights server (download.pytorch.org)? :func:`coursekit.runtime.is_reachable`;
    False at once when ``COURSEKIT_OFFLINE=1``."""
    return is_reachable(*_PROBE_HOST, timeout=timeout)


def is_cached(weights: WeightsEnum) -> bool:
    """True when the torchvision weights file is already in ``torch.hub.get_dir()/checkpoints``."""
    file_name = weights.url.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / file_name).is_file()


def available(weights: WeightsEnum) -> bool:
    """Can these torchvision weights be loaded now (cached, or downloadable)?"""
    return is_cached(weights) or is_online()


def _say(message: str, verbose: bool) -> None:
    if verbose:
        print(f"coursekit: {message}")


def _why_offline() -> str:
    return "COURSEKIT_OFFLINE=1" if is_offline() else "no network"


def resnet18_backbone(pretrained: bool = True, verbose: bool = True) -> tuple[nn.Module, Source]:
    """A torchvision ResNet-18 and where its weights came from.

    - ``pretrained=False``: random initialisation (``"random"``).
    - ImageNet weights when cached or downloadable (``"imagenet"``): ``fc`` has 1000 outputs.
    - otherwise coursekit's own ResNet-18 pretrained on Shapes (``"coursekit-shapes"``): same layers,
      ``fc`` has 6 outputs (the shape kinds). Prints one line saying so.

    Either way, inputs are normalised with ImageNet's mean/std (``IMAGENET_MEAN``, ``IMAGENET_STD``) and
    the caller replaces ``model.fc`` for its own task.
    """
    if not pretrained:
        return resnet18(weights=None), "random"
    weights = ResNet18_Weights.IMAGENET1K_V1
    if is_cached(weights) or is_online():
        try:
            return resnet18(weights=weights), "imagenet"
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a broken download a RuntimeError
            _say(f"could not load ImageNet weights ({type(err).__name__}); falling back", verbose)
    model = coursekit_resnet18(verbose=False)
    _say(
        f"offline ({_why_offline()}): using ResNet-18 pretrained by coursekit on its Shapes source task "
        f"instead of ImageNet (cached in {cache_dir()})",
        verbose,
    )
    return model, "coursekit-shapes"


def _checkpoint_path() -> Path:
    name = f"resnet18_shapes_v{_PRETRAIN_VERSION}_s{_PRETRAIN_STEPS}_r{_PRETRAIN_SIZE}.pt"
    return cache_dir() / "weights" / name


@contextlib.contextmanager
def _file_lock(path: Path):
    """One process pretrains while the others (parallel test workers, two notebooks) wait for its file.

    ``fcntl`` exists on Linux and macOS only; on Windows the lock is skipped (two notebooks started at
    once may then both pretrain: the result is the same file, replaced atomically).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def coursekit_resnet18(verbose: bool = True) -> nn.Module:
    """ResNet-18 pretrained by coursekit on Shapes (6-way ``fc``: which shape is it); computed once, then cached.

    The first call trains for one to three minutes on a laptop CPU (``pretrain_resnet18``); later calls load
    the cached file with ``torch.load(weights_only=True)``.
    """
    path = _checkpoint_path()
    with _file_lock(path):
        if not path.is_file():
            _say(f"pretraining ResNet-18 on Shapes once ({_PRETRAIN_STEPS} steps, cached at {path})", verbose)
            start = time.perf_counter()
            state = pretrain_resnet18(steps=_PRETRAIN_STEPS)
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)  # atomic: a reader never sees half a file
            _say(f"pretrained in {time.perf_counter() - start:.0f} s", verbose)
    model = resnet18(weights=None, num_classes=_num_source_classes())
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def _num_source_classes() -> int:
    from coursekit.data import Shapes

    return len(Shapes.CLASSES) - 1


def _source_batch(data, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of the source task: normalised images ``[B, 3, H, W]`` and class indices ``[B]`` (0-5)."""
    images, labels = [], []
    for i in range(step * batch_size, (step + 1) * batch_size):
        image, target = data[i]
        images.append(image)
        labels.append(target["labels"][0] - 1)  # 0 is "background" in Shapes.CLASSES
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (torch.stack(images) - mean) / std, torch.stack(labels)


def pretrain_resnet18(
    steps: int = _PRETRAIN_STEPS,
    batch_size: int = _PRETRAIN_BATCH,
    image_size: int = _PRETRAIN_SIZE,
    seed: int = _PRETRAIN_SEED,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Train a ResNet-18 from scratch on the source task; return its state dict (CPU tensors).

    Source task: "which of the 6 shape kinds is this" (one shape per image, textured backgrounds),
    cross-entropy, AdamW with a one-cycle schedule. Every
    batch is a function of (seed, step) only, so the result is the same on every run of the same
    machine. Runs on the CPU on purpose: the cache must not depend on the device. The initialisation
    draws from torch's generator seeded with ``seed`` inside ``torch.random.fork_rng``: the caller's
    random state is left as it was (a notebook's randomness must not depend on whether the cache existed).
    """
    from tqdm.auto import tqdm

    from coursekit.data.shapes import single_shapes

    data = single_shapes(steps * batch_size, image_size, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet18(weights=None, num_classes=_num_source_classes())
    optimizer = torch.optim.AdamW(model.parameters(), lr=_PRETRAIN_LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=_PRETRAIN_LR, total_steps=steps, pct_start=0.2)
    model.train()
    for step in tqdm(range(steps), desc="pretraining ResNet-18 on Shapes", disable=not progress):
        images, targets = _source_batch(data, step, batch_size)
        loss = nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_backbone_weights(module: nn.Module, verbose: bool = True) -> Source:
    """Load the best available ResNet-18 weights into ``module``, a ResNet-18 body (torchvision's ResNet,
    the ``body`` of a detection backbone, or an smp ``resnet18`` encoder), ignoring the classifier ``fc``.

    Returns where the weights came from. Raises ``ValueError`` if the module is not a ResNet-18.
    """
    model, source = resnet18_backbone(pretrained=True, verbose=verbose)
    # The classifier is the caller's; BatchNorm's step counter is absent from frozen BatchNorm (detection).
    def comparable(key: str) -> bool:
        return not key.startswith("fc.") and not key.endswith("num_batches_tracked")

    state = {k: v for k, v in model.state_dict().items() if comparable(k)}
    # Compare keys and shapes ourselves: smp's encoders override load_state_dict and return None.
    own = {k: v.shape for k, v in module.state_dict().items() if comparable(k)}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(k for k in own.keys() & state.keys() if own[k] != state[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"module is not a ResNet-18 body: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(mismatched)} of another shape "
            f"(e.g. {mismatched[:2]})"
        )
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name in state:
                tensor.copy_(state[name])
    return source


def smp_weights_cached(encoder: str = "resnet18", weights: str = "imagenet") -> bool:
    """True when segmentation-models-pytorch's ``weights`` for ``encoder`` are in the Hugging Face cache
    (both files smp reads, at the revision it pins): then smp loads them without the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from segmentation_models_pytorch.encoders import encoders
    except ImportError:
        return False
    settings = encoders.get(encoder, {}).get("pretrained_settings", {}).get(weights)
    if not settings:
        return False
    return all(isinstance(try_to_load_from_cache(settings["repo_id"], name, revision=settings["revision"]), str)
               for name in ("config.json", "model.safetensors"))


def smp_encoder_weights(verbose: bool = True) -> str | None:
    """``"imagenet"`` when segmentation-models-pytorch has its encoder weights cached or may download
    them, else ``None``.

    With ``None``, build the smp model with ``encoder_weights=None`` and call
    ``load_backbone_weights(model.encoder)`` to put coursekit's pretrained ResNet-18 in (encoder
    ``"resnet18"``). Set ``HF_HUB_OFFLINE=1`` before importing smp offline, or it retries for ~25 s.
    """
    if smp_weights_cached() or is_online():
        return "imagenet"
    _say(f"offline ({_why_offline()}): smp encoder without ImageNet weights; "
         "load coursekit's ResNet-18 with load_backbone_weights(model.encoder)", verbose)
    return None
