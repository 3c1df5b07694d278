"""Image quality: PSNR, the number Deep Image Prior plots against iterations (notebook 09)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["psnr"]


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 * log10(data_range**2 / MSE)`` over all elements.

    Args:
        pred, target: tensors of the same shape (e.g. Tensor[3, H, W] or a batch), images in
            ``[0, data_range]`` (the course's images are float in [0, 1], so ``data_range=1``).
        data_range: max - min of the possible values (255 for uint8 images).

    Returns:
        PSNR as a float; ``inf`` for identical images. Computed in float64, matches
        ``skimage.metrics.peak_signal_noise_ratio``. Every 6 dB halves the RMS error.
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise ValueError("pred and target must be tensors")
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must have the same shape")
    if pred.numel() == 0:
        raise ValueError("pred and target are empty")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    # on pred's device: a GPU output against a CPU image is common (a DIP fit, a student's own loop)
    mse = float(torch.mean((pred.detach().double() - target.detach().to(pred.device).double()) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
