"""Deep Image Prior: the fitting loop, each task's corruption and loss, and the classical baselines.

Taught in notebook ``09_deep_image_prior`` (deck 004; Ulyanov, Vedaldi and Lempitsky, CVPR 2018).
The net lives in :mod:`coursekit.models.dip`; this module holds what is done *with* it:

- :func:`fit_dip` is the one optimisation loop. It knows nothing about the task: it minimises
  ``loss_fn(net(noise))`` and, when given the clean image, records the PSNR on the way. Its settings
  (iterations, learning rate, optimiser, regularisers, recording) are one :class:`DIPConfig`.
- Each task is a corruption (what the camera did) plus a loss closure over the corrupted data:
  :func:`denoising_loss`, :func:`inpainting_loss`, :func:`super_resolution_loss`. Each loss is
  zero when the net outputs the clean image, and says nothing about the pixels it cannot see.
- The classical answer to each task, for the comparison table: :func:`classical_denoise`
  (total variation or non-local means), :func:`classical_inpaint` (biharmonic),
  :func:`bicubic_upsample`.

Images here are float tensors in [0, 1] shaped ``[1, 3, H, W]`` (a batch of one, as the net
outputs them); functions also accept ``[3, H, W]`` and give back the shape they were given.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from coursekit.metrics.image import psnr
from coursekit.runtime import device as default_device

__all__ = [
    "DIPConfig",
    "DIPResult",
    "fit_dip",
    "LossFn",
    "add_gaussian_noise",
    "random_pixel_mask",
    "text_mask",
    "downsample",
    "denoising_loss",
    "inpainting_loss",
    "super_resolution_loss",
    "classical_denoise",
    "classical_inpaint",
    "bicubic_upsample",
]

LossFn = Callable[[Tensor], Tensor]  # net output [1, 3, H, W] -> scalar loss
Criterion = Literal["mse", "l1"]
Optimizer = Literal["adam", "sgd"]
Denoiser = Literal["tv", "nlm"]
_CRITERIA: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": F.mse_loss, "l1": F.l1_loss}
_OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
_SGD_MOMENTUM = 0.9


# ----------------------------------------------------------------------------------------------
# Shapes and PSNR
# ----------------------------------------------------------------------------------------------
def _as_batch(img: Tensor, name: str) -> Tensor:
    """``[3, H, W]`` or ``[1, C, H, W]`` -> ``[1, C, H, W]``; anything else is a ValueError."""
    if img.dim() == 3:
        img = img[None]
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f"{name} must be one image, [C, H, W] or [1, C, H, W], got {list(img.shape)}")
    return img


def _like(out: Tensor, reference: Tensor) -> Tensor:
    """Give ``out`` ([1, C, H, W]) back in the rank the caller used for ``reference``."""
    return out[0] if reference.dim() == 3 else out


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
@dataclass
class DIPResult:
    """What :func:`fit_dip` returns. Images are on the CPU, ``[1, 3, H, W]``."""

    net: nn.Module  # the fitted copy; the net passed to fit_dip is left at its initialisation
    output: Tensor  # the output at the last iteration
    steps: list[int] = field(default_factory=list)  # iterations (1-based) at which these were recorded
    losses: list[float] = field(default_factory=list)  # the task loss at those iterations
    psnrs: list[float] = field(default_factory=list)  # PSNR (dB) vs the clean image; empty without it
    snapshot_steps: list[int] = field(default_factory=list)
    snapshots: list[Tensor] = field(default_factory=list)  # outputs at snapshot_steps, [3, H, W] each
    best_step: int | None = None  # iteration of the highest recorded PSNR (an oracle: it needs the clean image)
    best_psnr: float | None = None
    best_output: Tensor | None = None
    seconds: float = 0.0  # wall time of the loop

    @property
    def final_psnr(self) -> float | None:
        return self.psnrs[-1] if self.psnrs else None


def _make_optimizer(kind: Optimizer | Callable, params: Iterable[nn.Parameter], lr: float):
    if callable(kind):
        return kind(params, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=_SGD_MOMENTUM)
    raise ValueError(f"optimizer must be one of {_OPTIMIZERS} or a torch.optim class, got {kind!r}")


@dataclass(frozen=True)
class DIPConfig:
    """The settings of one Deep Image Prior fit (:func:`fit_dip`); what the paper tunes per task.

    Frozen: make a variant with ``dataclasses.replace(config, n_iters=4000)``. A bad value is a
    ``ValueError`` when the config is built.
    """

    n_iters: int  # gradient steps (the paper at 512 px: 3000 denoising, 2000 x4 SR, 5000+ inpainting)
    lr: float = 0.01  # learning rate
    optimizer: Optimizer | Callable = "adam"  # "adam" (the paper's), "sgd" (momentum 0.9) or a torch.optim class
    reg_noise_std: float = 0.0  # std of fresh noise added to the input every step (paper, denoising: 1/30)
    ema: float | None = None  # outputs as a moving average over iterations (paper, denoising: 0.99); None: off
    record_every: int = 10  # loss (and PSNR) at every record_every-th iteration and at the last one
    snapshot_every: int | None = None  # keep the output image this often; None: never

    def __post_init__(self) -> None:
        if self.n_iters < 1:
            raise ValueError(f"n_iters must be >= 1, got {self.n_iters}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not callable(self.optimizer) and self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS} or a torch.optim class, got {self.optimizer!r}")
        if self.record_every < 1 or (self.snapshot_every is not None and self.snapshot_every < 1):
            raise ValueError(f"record_every and snapshot_every must be >= 1, got {self.record_every}, "
                             f"{self.snapshot_every}")
        if self.reg_noise_std < 0:
            raise ValueError(f"reg_noise_std must be >= 0, got {self.reg_noise_std}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) or None, got {self.ema}")


def fit_dip(
    net: nn.Module,
    noise: Tensor,
    loss_fn: LossFn,
    config: DIPConfig,
    *,
    clean: Tensor | None = None,
    callback: Callable[[int, Tensor, float], bool | None] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> DIPResult:
    """Fit a copy of ``net`` so that ``loss_fn(net(noise))`` is small: the Deep Image Prior loop.

    Args:
        net: maps ``noise`` to an image ``[1, 3, H, W]``. It is deep-copied: the fit never changes
            the net you pass, so several fits can start from the same random initialisation.
        noise: the fixed input ``[1, C, H, W]`` (see :func:`coursekit.models.dip.make_noise`).
        loss_fn: the task, a closure over its corrupted data: output ``[1, 3, H, W]`` -> scalar.
        config: iterations, learning rate, optimiser, the paper's two regularisers (input noise,
            moving average of the outputs) and how often to record (:class:`DIPConfig`).
        clean: the clean image ``[1, 3, H, W]`` or ``[3, H, W]``, ONLY for measuring PSNR; the
            fit never uses it otherwise.
        callback: ``callback(step, output, loss)`` at each recorded step; return True to stop.
        device: where to fit (default :func:`coursekit.device`); progress: show a tqdm bar.

    Returns a :class:`DIPResult`; the inputs (``net``, ``noise``, ``clean``) are not modified.
    """
    if not isinstance(config, DIPConfig):
        raise ValueError(f"config must be a DIPConfig, e.g. DIPConfig(n_iters=2000), got {type(config).__name__}")
    dev = torch.device(device) if device is not None else default_device()
    model = copy.deepcopy(net).to(dev).train()
    z = _as_batch(noise, "noise").to(dev)  # .to() copies only across devices; z is never written
    target = _as_batch(clean, "clean").to(dev) if clean is not None else None
    opt = _make_optimizer(config.optimizer, model.parameters(), config.lr)
    result = DIPResult(net=model, output=torch.empty(0))
    smooth: Tensor | None = None
    start = time.perf_counter()
    # Counted by hand once each step is done: a bar that tqdm iterates and that a stop leaves early ends red.
    bar = tqdm(total=config.n_iters, desc="DIP", disable=not progress, leave=False)
    for step in range(1, config.n_iters + 1):
        z_in = z + config.reg_noise_std * torch.randn_like(z) if config.reg_noise_std > 0 else z
        out = model(z_in)  # (1, 3, H, W)
        loss = loss_fn(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            ema = config.ema
            smooth = out.detach() if smooth is None or ema is None else ema * smooth + (1 - ema) * out
        if step % config.record_every == 0 or step == config.n_iters:
            stop = _record(result, step, smooth, loss.item(), target, callback)
            bar.set_postfix(loss=f"{result.losses[-1]:.2e}",
                            **({"psnr": f"{result.psnrs[-1]:.2f}"} if result.psnrs else {}))
            if stop:
                bar.update()
                bar.total = bar.n  # a deliberate early stop: the bar ends full, and goes
                break
        bar.update()
        if config.snapshot_every is not None and (step % config.snapshot_every == 0 or step == config.n_iters):
            result.snapshot_steps.append(step)
            result.snapshots.append(smooth[0].detach().cpu().clone())
    bar.close()
    result.output = smooth.detach().cpu().clone()
    result.seconds = time.perf_counter() - start
    return result


def _record(result: DIPResult, step: int, output: Tensor, loss: float, target: Tensor | None,
            callback: Callable[[int, Tensor, float], bool | None] | None) -> bool:
    """Append loss / PSNR of ``output`` at ``step``; keep the best output; run the callback."""
    result.steps.append(step)
    result.losses.append(loss)
    if target is not None:
        value = psnr(output, target)
        result.psnrs.append(value)
        if result.best_psnr is None or value > result.best_psnr:
            result.best_step, result.best_psnr = step, value
            result.best_output = output.detach().cpu().clone()
    return bool(callback(step, output.detach(), loss)) if callback is not None else False


# ----------------------------------------------------------------------------------------------
# Corruptions
# ----------------------------------------------------------------------------------------------
def add_gaussian_noise(img: Tensor, sigma: float, *, generator: torch.Generator | None = None,
                       clip: bool = True) -> Tensor:
    """``img + N(0, sigma^2)`` per pixel and channel, clipped to [0, 1] as a camera would store it.

    ``sigma`` is on the [0, 1] scale: the classic benchmark's 25 (of 255) is ``25 / 255``.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 (on the [0, 1] scale, e.g. 25 / 255), got {sigma}")
    noise = torch.randn(img.shape, generator=generator).to(img.device) * sigma
    noisy = img + noise
    return noisy.clamp(0, 1) if clip else noisy


def random_pixel_mask(height: int, width: int, missing: float = 0.5, *,
                      generator: torch.Generator | None = None) -> Tensor:
    """A ``[1, 1, H, W]`` bool mask, True where the pixel is KNOWN; ``missing`` is the share lost."""
    if not 0 <= missing < 1:
        raise ValueError(f"missing must be a fraction in [0, 1), got {missing}")
    return torch.rand(1, 1, height, width, generator=generator) >= missing


def text_mask(height: int, width: int, text: str = "Deep Image Prior", *, font_size: int | None = None,
              line_spacing: float = 1.4) -> Tensor:
    """A ``[1, 1, H, W]`` bool mask, True where the pixel is KNOWN: ``text`` written over the image.

    The text is repeated line after line down the image (Pillow's built-in font, so no download);
    the letters are the missing pixels.
    """
    from PIL import Image, ImageDraw, ImageFont

    if height < 1 or width < 1 or not text:
        raise ValueError(f"need a positive size and some text, got {height}x{width} and {text!r}")
    size = font_size or max(8, height // 10)
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    step = max(1, int(size * line_spacing))
    for row, y in enumerate(range(size // 4, height, step)):
        draw.text((size // 2 - (row % 2) * size, y), text + "  " + text, fill=255, font=font)
    letters = torch.from_numpy(np.asarray(canvas) > 0)
    return ~letters[None, None]


def downsample(img: Tensor, factor: int) -> Tensor:
    """The low-resolution camera: each output pixel is the mean of a ``factor x factor`` block.

    ``[1, 3, H, W] -> [1, 3, H / factor, W / factor]`` (H and W must be multiples of ``factor``).
    Differentiable: the super-resolution loss pushes the net's output through it.
    """
    x = _as_batch(img, "img")
    H, W = x.shape[-2:]
    if factor < 1 or H % factor or W % factor:
        raise ValueError(
            f"image {H}x{W} cannot be downsampled by {factor}; crop it to "
            f"{H // max(factor, 1) * max(factor, 1)}x{W // max(factor, 1) * max(factor, 1)}"
        )
    return _like(F.avg_pool2d(x, factor), img)


# ----------------------------------------------------------------------------------------------
# Task losses: closures over the corrupted data
# ----------------------------------------------------------------------------------------------
def _criterion(name: Criterion) -> Callable[[Tensor, Tensor], Tensor]:
    if name not in _CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(_CRITERIA)}, got {name!r}")
    return _CRITERIA[name]


def _on_device_of(*fixed: Tensor) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """The loss's fixed tensors (target, mask), on the device of the net's output, copied once per device.

    The corrupted image is usually made on the CPU, while :func:`fit_dip` runs the net on the GPU.
    """
    copies: dict[torch.device, tuple[Tensor, ...]] = {}

    def on(out: Tensor) -> tuple[Tensor, ...]:
        if out.device not in copies:
            copies[out.device] = tuple(t.to(out.device) for t in fixed)
        return copies[out.device]

    return on


def denoising_loss(noisy: Tensor, criterion: Criterion = "mse") -> LossFn:
    """Denoising: compare the output with the noisy image, every pixel. ``E(x) = ||x - x0||^2``."""
    fixed = _on_device_of(_as_batch(noisy, "noisy").detach())
    crit = _criterion(criterion)
    return lambda out: crit(out, *fixed(out))


def inpainting_loss(corrupted: Tensor, known: Tensor, criterion: Criterion = "mse") -> LossFn:
    """Inpainting: compare only the known pixels. ``E(x) = ||(x - x0) * m||^2``.

    ``known``: bool ``[1, 1, H, W]`` or ``[H, W]``, True where ``corrupted`` holds a real pixel.
    The missing pixels do not enter the loss: what the net puts there is the prior's guess.
    """
    target = _as_batch(corrupted, "corrupted").detach()
    m = known.reshape(1, 1, *known.shape[-2:]).to(target.device, torch.float32)
    if m.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"mask {list(known.shape)} and image {list(target.shape)} differ in size")
    if not m.any():
        raise ValueError("the mask marks no pixel as known: there is nothing to fit")
    crit = _criterion(criterion)
    fixed = _on_device_of(target * m, m, m.expand_as(target).sum())

    def loss(out: Tensor) -> Tensor:
        known_target, mask, n_known = fixed(out)
        # The mean over the known pixels only, so the loss does not shrink when more pixels are missing.
        return crit(out * mask, known_target, reduction="sum") / n_known

    return loss


def super_resolution_loss(low_res: Tensor, factor: int, criterion: Criterion = "mse") -> LossFn:
    """Super-resolution: downsample the high-res output, compare it with the low-res image.

    ``E(x) = ||d(x) - x0||^2`` with ``d`` = :func:`downsample` by ``factor``; the net's output is
    ``factor`` times larger than ``low_res`` (so is the noise it is fed).
    """
    fixed = _on_device_of(_as_batch(low_res, "low_res").detach())
    crit = _criterion(criterion)
    return lambda out: crit(downsample(out, factor), *fixed(out))


# ----------------------------------------------------------------------------------------------
# Classical baselines (scikit-image and torch), for the comparison table
# ----------------------------------------------------------------------------------------------
def _to_hwc(img: Tensor) -> np.ndarray:
    return _as_batch(img, "img")[0].detach().cpu().permute(1, 2, 0).double().numpy()


def _from_hwc(arr: np.ndarray, like: Tensor) -> Tensor:
    out = torch.from_numpy(np.ascontiguousarray(arr)).float().permute(2, 0, 1)[None]
    return _like(out.clamp(0, 1).to(like.device), like)


def classical_denoise(noisy: Tensor, sigma: float, method: Denoiser = "nlm") -> Tensor:
    """A classical denoiser from scikit-image, given the noise level ``sigma`` (on the [0, 1] scale).

    ``"nlm"``: non-local means (fast mode, 5x5 patches, ``h = 0.8 sigma``, scikit-image's own
    example). ``"tv"``: total-variation (Chambolle) with ``weight = 0.8 sigma`` (weight grows with
    the noise). Neither setting is tuned on the clean image.
    """
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    arr = _to_hwc(noisy)
    if method == "nlm":
        out = denoise_nl_means(arr, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                               patch_distance=6, channel_axis=-1)
    elif method == "tv":
        out = denoise_tv_chambolle(arr, weight=0.8 * sigma, channel_axis=-1)
    else:
        raise ValueError(f"method must be 'nlm' or 'tv', got {method!r}")
    return _from_hwc(out, noisy)


def classical_inpaint(corrupted: Tensor, known: Tensor) -> Tensor:
    """Biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``) of the unknown pixels.

    ``known``: True where the pixel is known (scikit-image wants the opposite: the missing ones).
    """
    from skimage.restoration import inpaint_biharmonic

    missing = ~known.reshape(known.shape[-2:]).cpu().numpy().astype(bool)
    return _from_hwc(inpaint_biharmonic(_to_hwc(corrupted), missing, channel_axis=-1), corrupted)


def bicubic_upsample(low_res: Tensor, factor: int) -> Tensor:
    """Bicubic interpolation ``[1, 3, h, w] -> [1, 3, factor h, factor w]``, clipped to [0, 1]."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    x = _as_batch(low_res, "low_res")
    out = F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)
    return _like(out.clamp(0, 1), low_res)
