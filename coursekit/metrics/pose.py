"""Keypoint metrics: PCK, the Percentage of Correct Keypoints (notebook 08).

A predicted joint is correct when its distance to the true joint is at most ``threshold * norm``,
where ``norm`` is a per-person size: the torso size for PCK (FLIC), the head size for PCKh (MPII;
PCKh@0.5 uses ``threshold=0.5``). Invisible joints count neither as right nor as wrong.

Results are fractions in [0, 1] (papers print 100x). The overall ("mean") PCK pools all visible joints of
all people, as MPII's evaluation does, so a joint that is rarely visible weighs less than a frequent one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["pck", "pck_curve"]


def _correct(pred: Tensor, target: Tensor, visible: Tensor, norm: Tensor | float, thresholds: Tensor) -> Tensor:
    """Correctness Tensor[T, N, K] bool of every joint at every threshold (invisible joints False)."""
    if not isinstance(pred, Tensor) or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred must be a Tensor[N, K, 2] of (x, y) pixels, got {_shape(pred)}")
    if not isinstance(target, Tensor) or target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {list(pred.shape)}, got {_shape(target)}")
    N, K, _ = pred.shape
    if not isinstance(visible, Tensor) or visible.shape != (N, K):
        raise ValueError(f"visible must be a bool Tensor[N, K] = [{N}, {K}], got {_shape(visible)}")
    norm = torch.as_tensor(norm, dtype=torch.float64).expand(N) if not isinstance(norm, Tensor) else norm
    if norm.shape not in ((N,), ()):
        raise ValueError(f"norm must be a Tensor[N] (one size per person, N={N}) or a number, got {_shape(norm)}")
    if (norm <= 0).any() or not torch.isfinite(norm).all():
        raise ValueError("norm must be positive and finite (a torso or head size in pixels)")
    dist = torch.linalg.vector_norm(pred.double() - target.double(), dim=-1)  # (N, K) pixels
    scaled = dist / norm.double().expand(N)[:, None]  # (N, K) in units of the person's size
    return (scaled[None] <= thresholds.double()[:, None, None]) & visible.bool()[None]


def _shape(x: object) -> str:
    return str(list(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def pck_curve(
    pred: Tensor,
    target: Tensor,
    visible: Tensor,
    norm: Tensor | float,
    thresholds: Sequence[float] | Tensor,
    per_joint: bool = False,
) -> Tensor:
    """PCK at each threshold: Tensor[T] float64 (pooled over joints), or Tensor[T, K] if ``per_joint``.

    Plot it against ``thresholds`` (e.g. ``torch.linspace(0, 0.5, 51)``): the curve the hourglass paper shows.
    Arguments as in :func:`pck`. A joint never visible has PCK NaN.
    """
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
    correct = _correct(pred, target, visible, norm, thresholds)  # (T, N, K)
    vis = visible.bool()
    if per_joint:
        return correct.sum(1) / vis.sum(0).double()  # (T, K); 0/0 -> NaN for a joint never visible
    return correct.sum((1, 2)) / vis.sum().double()  # (T,)


def pck(
    pred: Tensor,
    target: Tensor,
    visible: Tensor,
    norm: Tensor | float,
    threshold: float = 0.2,
    per_joint: bool = False,
) -> float | Tensor:
    """Percentage of Correct Keypoints (a fraction in [0, 1]).

    Args:
        pred, target: Tensor[N, K, 2], (x, y) in pixels, N people, K joints.
        visible: Tensor[N, K] bool; False joints are left out of numerator and denominator.
        norm: Tensor[N] per-person size in pixels (torso for PCK, head for PCKh), or one number.
        threshold: a joint is correct if ``||pred - target|| <= threshold * norm``. PCK@0.2 on FLIC,
            PCKh@0.5 on MPII.
        per_joint: return Tensor[K] float64 (NaN for a joint never visible) instead of the pooled float.

    Returns:
        Pooled PCK (correct visible joints / visible joints, NaN if none is visible), or per-joint PCK.
    """
    curve = pck_curve(pred, target, visible, norm, [threshold], per_joint=per_joint)
    return curve[0] if per_joint else float(curve[0])
