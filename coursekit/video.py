"""Action recognition around the video models: optical flow, training, the time-direction test, torchvision's nets.

Taught in notebook 11 (deck 003, "classifying video"). The models are in :mod:`coursekit.models.video`,
the clips in :class:`coursekit.data.ActionClips`.

- :func:`optical_flow`: TV-L1 flow between consecutive frames (scikit-image), the two-stream net's input.
- :func:`train_classifier` / :func:`predict`: one loop for every model, inputs a tuple of tensors
  (``(clips,)`` or ``(clips, flows)``).
- :func:`direction_accuracy`: on clips of a reversed pair (sit down / stand up), how often the model
  prefers the right one of the two: 50% is what a model blind to frame order gets.
- :func:`torchvision_video_model`: ``r3d_18`` / ``r2plus1d_18`` / ``mc3_18``, Kinetics-400 weights when
  they can be had, else built without weights (one line says so).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "optical_flow",
    "clip_flows",
    "train_classifier",
    "predict",
    "accuracy",
    "direction_accuracy",
    "TORCHVISION_VIDEO_MODELS",
    "torchvision_video_model",
]

_GREY = (0.2989, 0.587, 0.114)  # luma weights of torchvision's rgb_to_grayscale


def optical_flow(clip: Tensor, num_warp: int = 2, num_iter: int = 5) -> Tensor:
    """Dense optical flow between consecutive frames of one clip, TV-L1 (``skimage.registration.optical_flow_tvl1``).

    Args:
        clip (Tensor[T, 3, H, W]): RGB frames in [0, 1], T >= 2.
        num_warp, num_iter: TV-L1's warps and iterations per scale. scikit-image's defaults (5 and 10) cost
            ~4x more; on these small, slow motions 2 and 5 find the same flow to a fraction of a pixel.
    Returns ``Tensor[T - 1, 2, H, W]``: for each pair (t, t + 1) the (dx, dy) displacement in pixels that
    carries frame t + 1 back onto frame t (``flow[0]`` = dx, ``flow[1]`` = dy).
    """
    from skimage.registration import optical_flow_tvl1

    if clip.dim() != 4 or clip.shape[1] != 3 or clip.shape[0] < 2:
        raise ValueError(f"clip must be (T, 3, H, W) with T >= 2, got shape {tuple(clip.shape)}")
    grey = (clip * clip.new_tensor(_GREY).view(1, 3, 1, 1)).sum(1).numpy()  # (T, H, W)
    flows = []
    for t in range(len(grey) - 1):
        v, u = optical_flow_tvl1(grey[t], grey[t + 1], num_warp=num_warp, num_iter=num_iter)  # rows, cols
        flows.append(np.stack([u, v]))
    return torch.from_numpy(np.stack(flows).astype(np.float32))


def clip_flows(clips: Tensor, progress: bool = True, **kwargs) -> Tensor:
    """:func:`optical_flow` of every clip: ``[N, T, 3, H, W] -> [N, T - 1, 2, H, W]``."""
    from tqdm.auto import tqdm

    if clips.dim() != 5:
        raise ValueError(f"clips must be (N, T, 3, H, W), got shape {tuple(clips.shape)}")
    return torch.stack([optical_flow(c, **kwargs) for c in tqdm(clips, desc="optical flow", disable=not progress)])


def _check_inputs(inputs: Sequence[Tensor], labels: Tensor | None = None) -> None:
    if not inputs or any(len(x) != len(inputs[0]) for x in inputs):
        raise ValueError("inputs must be a non-empty tuple of tensors with the same first dimension")
    if labels is not None and len(labels) != len(inputs[0]):
        raise ValueError(f"{len(labels)} labels for {len(inputs[0])} inputs")


def train_classifier(
    model: nn.Module,
    inputs: Sequence[Tensor],
    labels: Tensor,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
    desc: str = "training",
) -> dict[str, list[float] | float]:
    """Train ``model(*batch_inputs)`` with cross-entropy: AdamW, one-cycle schedule, random batches.

    ``inputs``: e.g. ``(clips,)`` or ``(clips, flows)``, each ``[N, ...]``; ``labels`` ``[N]``.
    Returns ``{"loss": [per step], "seconds": float}``; the model is left in eval mode.
    """
    from tqdm.auto import tqdm

    _check_inputs(inputs, labels)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
    losses: list[float] = []
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        index = torch.randint(len(labels), (min(batch_size, len(labels)),), generator=generator)
        logits = model(*(x[index].to(device) for x in inputs))
        loss = F.cross_entropy(logits, labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"loss": losses, "seconds": time.perf_counter() - start}


@torch.no_grad()
def predict(model: nn.Module, inputs: Sequence[Tensor], device: torch.device | str = "cpu",
            batch_size: int = 128) -> Tensor:
    """Logits ``[N, C]`` (CPU) of ``model`` in eval mode on ``inputs`` (a tuple of ``[N, ...]`` tensors)."""
    _check_inputs(inputs)
    model.eval().to(device)
    n = len(inputs[0])
    chunks = [model(*(x[i : i + batch_size].to(device) for x in inputs)).cpu() for i in range(0, n, batch_size)]
    return torch.cat(chunks)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``logits [N, C]`` against ``labels [N]``."""
    if logits.dim() != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be (N, C) with N = len(labels); got {tuple(logits.shape)}, {len(labels)} labels")
    return float((logits.argmax(1) == labels).float().mean())


def direction_accuracy(logits: Tensor, labels: Tensor, pairs: Sequence[tuple[int, int]]) -> float:
    """On the clips whose label is in one of ``pairs`` (action, reversed action): how often the model scores
    the true one of the pair above the other. 0.5 is chance, and exactly what a model blind to frame order
    gets on average (it gives a clip and its reverse the same scores)."""
    if logits.dim() != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be (N, C) with N = len(labels); got {tuple(logits.shape)}, {len(labels)} labels")
    other = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    rows = [i for i, y in enumerate(labels.tolist()) if y in other]
    if not rows:
        raise ValueError(f"no clip has a label in the pairs {tuple(pairs)}")
    right = [bool(logits[i, y] > logits[i, other[y]]) for i, y in ((i, int(labels[i])) for i in rows)]
    return float(np.mean(right))


TORCHVISION_VIDEO_MODELS: tuple[str, ...] = ("r3d_18", "r2plus1d_18", "mc3_18")


def torchvision_video_model(name: str = "r3d_18", num_classes: int | None = None, pretrained: bool = True,
                            verbose: bool = True) -> tuple[nn.Module, str]:
    """torchvision's video ResNet ``name`` and where its weights came from (``"kinetics400"`` or ``"random"``).

    Input ``[B, 3, T, H, W]`` normalised with the weights' mean/std (``weights.transforms()``; 112 px and
    16 frames for Kinetics). With ``pretrained`` and the weights cached or downloadable: Kinetics-400 weights.
    Otherwise built without weights, printing one line. ``num_classes``: replace ``fc`` by a new linear layer.
    """
    import torchvision.models
    import torchvision.models.video as tvv

    from coursekit.weights import is_cached, is_online

    if name not in TORCHVISION_VIDEO_MODELS:
        raise ValueError(f"unknown torchvision video model {name!r}; choose one of {TORCHVISION_VIDEO_MODELS}")
    builder = getattr(tvv, name)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    model, source = None, "random"
    if pretrained and (is_cached(weights) or is_online()):
        try:
            model, source = builder(weights=weights), "kinetics400"
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            if verbose:
                print(f"coursekit: could not load {name}'s Kinetics weights ({type(err).__name__}); random init")
    if model is None:
        model = builder(weights=None)
        if pretrained and verbose:
            print(f"coursekit: offline: {name} built without its Kinetics-400 weights (random initialisation)")
    if num_classes is not None:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model, source
