"""Drawing for every notebook: images, boxes, masks, keypoints, heatmaps, training and metric curves.

Every function takes an optional matplotlib ``ax`` (a new figure is made when it is ``None``) and
returns the axes it drew on (:func:`show_grid` returns the figure), so drawings compose::

    ax = draw_boxes(img, gt_boxes, color="lime")          # ground truth ...
    draw_boxes(None, pred_boxes, scores=scores, ax=ax)    # ... and predictions on top

Inputs follow the course conventions: images are ``Tensor[3, H, W]`` floats in [0, 1] (also
``Tensor[H, W]``, or NumPy ``H x W x 3`` / ``H x W`` arrays, uint8 or float); boxes are float
``xyxy`` pixels ``Tensor[N, 4]``; class ``i`` always gets the colour :func:`class_color` ``(i)``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

__all__ = [
    "class_color",
    "to_numpy_image",
    "show_image",
    "draw_boxes",
    "draw_masks",
    "draw_keypoints",
    "draw_heatmap",
    "show_grid",
    "plot_history",
    "plot_curves",
    "figure_to_png",
    "in_notebook",
]

# 20 well-separated colours; class i (1-based, 0 = background) takes entry (i - 1) mod 20.
_PALETTE = plt.get_cmap("tab20").colors
_BACKGROUND = (0.0, 0.0, 0.0)
_DEFAULT_BOX_COLOR = "lime"
# History keys that are bookkeeping, not curves: left out when plot_history picks keys itself.
_BOOKKEEPING = ("epoch", "step", "time", "lr")


def class_color(i: int) -> tuple[float, float, float]:
    """The RGB colour (floats in [0, 1]) of class ``i``: the same in every figure of the course.

    Class 0 is background (black); classes 1, 2, ... cycle through matplotlib's ``tab20``.
    """
    i = int(i)
    if i < 0:
        raise ValueError(f"class index must be >= 0, got {i}")
    return _BACKGROUND if i == 0 else tuple(_PALETTE[(i - 1) % len(_PALETTE)])


# ----------------------------------------------------------------------------------------------
# Input conversion
# ----------------------------------------------------------------------------------------------
def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_numpy_image(img: Any) -> np.ndarray:
    """An image as a NumPy array ready for ``imshow``: ``H x W x 3`` or ``H x W`` floats in [0, 1].

    Accepts ``Tensor[3, H, W]``, ``Tensor[1, H, W]``, ``Tensor[H, W]`` (channels first, torch's
    layout) and NumPy / PIL ``H x W x 3``, ``H x W x 4`` or ``H x W`` (channels last); uint8 is
    divided by 255, floats are clipped to [0, 1].
    """
    if isinstance(img, Tensor):
        if img.dim() == 3:
            if img.shape[0] not in (1, 3):
                raise ValueError(
                    f"image tensor must be [3, H, W], [1, H, W] or [H, W], got {list(img.shape)}"
                )
            img = img.permute(1, 2, 0)  # torch is channels-first, matplotlib channels-last
    arr = _as_numpy(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(
            f"image must be H x W, H x W x 3 (NumPy) or [3, H, W] (Tensor), got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _image_size(img: Any) -> tuple[int, int]:
    arr = to_numpy_image(img)
    return arr.shape[0], arr.shape[1]


def _get_ax(ax: Axes | None, figsize: tuple[float, float] = (5, 5)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _maybe_show(img: Any, ax: Axes | None) -> Axes:
    """Show ``img`` on a (new) axes, or just return ``ax`` when ``img`` is None (draw on top)."""
    if img is None:
        if ax is None:
            raise ValueError("give an image, or an ax that already shows one")
        return ax
    return show_image(img, ax=ax)


# ----------------------------------------------------------------------------------------------
# Images and what lies on them
# ----------------------------------------------------------------------------------------------
def show_image(img: Any, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Show one image (see :func:`to_numpy_image` for the layouts accepted), axes hidden."""
    arr = to_numpy_image(img)
    ax = _get_ax(ax)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def _check_boxes(boxes: Any) -> np.ndarray:
    arr = _as_numpy(boxes).astype(np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (xyxy pixels), got {list(arr.shape)}")
    if ((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])).any():
        raise ValueError(
            "boxes must be xyxy with x2 >= x1 and y2 >= y1; convert xywh/cxcywh with box_convert"
        )
    return arr


def _box_caption(i: int, labels, scores, class_names) -> str | None:
    parts = []
    if labels is not None:
        label = int(labels[i])
        parts.append(class_names[label] if class_names is not None else str(label))
    if scores is not None:
        parts.append(f"{float(scores[i]):.2f}")
    return ": ".join(parts) if parts else None


def draw_boxes(
    img: Any,
    boxes: Tensor | np.ndarray | Sequence[Sequence[float]],
    labels: Tensor | Sequence[int] | None = None,
    scores: Tensor | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    color: Any = None,
    linewidth: float = 2.0,
) -> Axes:
    """Draw ``boxes`` (``Tensor[N, 4]`` float xyxy pixels) on ``img`` (or on ``ax`` if img is None).

    One rectangle per box, coloured by class (:func:`class_color` of ``labels[i]``) unless
    ``color`` is given; a caption ``"name: score"`` when labels and/or scores are given.
    ``class_names[label]`` names a label (index 0 is the background, torchvision style).
    Taught in notebook 02 onwards.
    """
    arr = _check_boxes(boxes)
    n = len(arr)
    for name, seq in (("labels", labels), ("scores", scores)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries but there are {n} boxes")
    ax = _maybe_show(img, ax)
    for i, (x1, y1, x2, y2) in enumerate(arr):
        c = (
            color
            if color is not None
            else (class_color(int(labels[i])) if labels is not None else _DEFAULT_BOX_COLOR)
        )
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, linewidth=linewidth))
        caption = _box_caption(i, labels, scores, class_names)
        if caption:
            ax.text(
                x1,
                y1,
                caption,
                fontsize=8,
                color="black",
                va="bottom",
                bbox={"facecolor": c, "alpha": 0.7, "pad": 1, "edgecolor": "none"},
            )
    return ax


def _mask_overlay(masks: np.ndarray, labels: Sequence[int] | None, alpha: float) -> np.ndarray:
    """An RGBA ``H x W x 4`` image: instance masks ``N x H x W`` or a semantic label map ``H x W``."""
    if masks.ndim == 2:  # semantic: one class index per pixel, background (0) left transparent
        classes = masks.astype(np.int64)
        if classes.min(initial=0) < 0:
            raise ValueError("a semantic mask holds class indices >= 0 (0 = background)")
        lut = np.array([class_color(i) for i in range(int(classes.max(initial=0)) + 1)])
        rgba = np.zeros((*classes.shape, 4))
        rgba[..., :3] = lut[classes]
        rgba[..., 3] = np.where(classes > 0, alpha, 0.0)
        return rgba
    rgba = np.zeros((*masks.shape[1:], 4))
    for i, m in enumerate(masks):  # later instances paint over earlier ones
        on = m > 0.5
        rgba[on, :3] = class_color(int(labels[i]) if labels is not None else i + 1)
        rgba[on, 3] = alpha
    return rgba


def draw_masks(
    img: Any,
    masks: Tensor | np.ndarray,
    alpha: float = 0.5,
    ax: Axes | None = None,
    labels: Tensor | Sequence[int] | None = None,
) -> Axes:
    """Overlay segmentation masks on ``img`` (one extra image layer on the axes).

    ``masks``: instance masks ``Tensor[N, H, W]`` (bool / uint8 / probabilities, > 0.5 is "on";
    ``Tensor[N, 1, H, W]`` from Mask R-CNN is accepted), each coloured by ``labels[i]`` or else by
    its index; or a semantic map ``Tensor[H, W]`` of integer class indices, class 0 transparent.
    Taught in notebooks 06 (semantic) and 07 (instance).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    arr = _as_numpy(masks)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2 and not np.issubdtype(arr.dtype, np.integer):
        arr = arr[None]  # a single float/bool mask is one instance, not a label map
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"masks must be [N, H, W] (instances) or [H, W] (class indices), got {list(arr.shape)}"
        )
    if labels is not None and (arr.ndim != 3 or len(labels) != len(arr)):
        raise ValueError(f"labels must give one class per instance mask ({len(arr)}), got {len(labels)}")
    if img is not None and _image_size(img) != arr.shape[-2:]:
        raise ValueError(
            f"masks are {arr.shape[-2:]} but the image is {_image_size(img)}: resize one of them"
        )
    ax = _maybe_show(img, ax)
    ax.imshow(_mask_overlay(arr, labels, alpha), interpolation="nearest")
    return ax


def _keypoint_arrays(keypoints: Any, visible: Any) -> tuple[np.ndarray, np.ndarray]:
    """(P, K, 2) coordinates and (P, K) visibility from the layouts draw_keypoints accepts."""
    kp = _as_numpy(keypoints).astype(np.float64)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[-1] not in (2, 3):
        raise ValueError(
            f"keypoints must be [K, 2], [K, 3] or [P, K, 2|3] (x, y[, visibility]), got {list(kp.shape)}"
        )
    vis = kp[..., 2] > 0 if kp.shape[-1] == 3 else np.ones(kp.shape[:2], dtype=bool)
    if visible is not None:
        flags = _as_numpy(visible).astype(bool)
        if flags.size != vis.size:
            raise ValueError(
                f"visible must have one flag per keypoint {list(kp.shape[:2])}, got {list(flags.shape)}"
            )
        vis = flags.reshape(vis.shape)
    return kp[..., :2], vis


def draw_keypoints(
    img: Any,
    keypoints: Tensor | np.ndarray,
    visible: Tensor | np.ndarray | None = None,
    skeleton: Sequence[tuple[int, int]] | None = None,
    ax: Axes | None = None,
    radius: float = 20.0,
    linewidth: float = 2.0,
) -> Axes:
    """Draw keypoints (and the limbs joining them) on ``img``.

    ``keypoints``: ``Tensor[K, 2]`` pixel (x, y) for one person, ``[P, K, 2]`` for several, or
    torchvision's ``[P, K, 3]`` whose third column is the visibility. ``visible`` (``[K]`` /
    ``[P, K]`` bool) overrides it; invisible joints and limbs touching them are not drawn.
    ``skeleton``: pairs ``(i, j)`` of joint indices joined by a line. Joint ``k`` is coloured
    ``class_color(k + 1)`` in every person, limb ``e`` ``class_color(e + 1)``. Notebook 08.
    """
    kp, vis = _keypoint_arrays(keypoints, visible)
    K = kp.shape[1]
    for i, j in skeleton or ():
        if not (0 <= i < K and 0 <= j < K):
            raise ValueError(f"skeleton edge ({i}, {j}) refers to a joint outside 0..{K - 1}")
    ax = _maybe_show(img, ax)
    for person, person_vis in zip(kp, vis, strict=True):
        for e, (i, j) in enumerate(skeleton or ()):
            if person_vis[i] and person_vis[j]:
                ax.plot(person[[i, j], 0], person[[i, j], 1], "-", color=class_color(e + 1), lw=linewidth)
        colors = [class_color(k + 1) for k in np.flatnonzero(person_vis)]
        ax.scatter(
            person[person_vis, 0],
            person[person_vis, 1],
            s=radius,
            c=colors,
            edgecolors="white",
            linewidths=0.8,
            zorder=3,
        )
    return ax


def draw_heatmap(
    img: Any,
    heatmap: Tensor | np.ndarray,
    ax: Axes | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Axes:
    """Overlay a heatmap, bilinearly resized to the image size (heatmaps are often 1/4 of it).

    ``heatmap``: ``Tensor[h, w]``, or ``[K, h, w]`` (one per joint: their maximum is shown).
    Values are min-max normalised for display. With ``img=None`` and no ``ax`` the heatmap is
    shown alone at its own size. Notebook 08 (pose heatmaps), class activation maps elsewhere.
    """
    hm = torch.as_tensor(_as_numpy(heatmap), dtype=torch.float32)
    if hm.dim() == 3:
        hm = hm.amax(dim=0)
    if hm.dim() != 2:
        raise ValueError(f"heatmap must be [h, w] or [K, h, w], got {list(hm.shape)}")
    if img is not None:
        H, W = _image_size(img)
        hm = F.interpolate(hm[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(hm.min()), float(hm.max())
    hm = (hm - lo) / (hi - lo) if hi > lo else torch.zeros_like(hm)
    if img is None:
        ax = _get_ax(ax)
        ax.set_axis_off()
        alpha = 1.0 if not ax.images else alpha
    else:
        ax = show_image(img, ax=ax)
    ax.imshow(hm.numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    return ax


def show_grid(
    images: Sequence[Any] | Tensor,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    size: float = 2.5,
) -> Figure:
    """Images side by side in a grid of ``ncols`` columns (``size`` inches per cell); returns the
    figure. ``images``: a list of images or a batch ``Tensor[B, 3, H, W]``."""
    n = len(images)
    if n == 0:
        raise ValueError("show_grid needs at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            show_image(images[k], ax=ax, title=titles[k] if titles is not None else None)
        else:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Curves
# ----------------------------------------------------------------------------------------------
def _history_series(history: Any) -> tuple[dict[str, list[float]], list[float]]:
    """(per-epoch columns, per-step losses) from a train.History or a dict of per-epoch lists."""
    if isinstance(history, Mapping):
        return {k: list(v) for k, v in history.items()}, []
    if not hasattr(history, "epochs"):
        raise ValueError(
            f"history must be a coursekit.train.History or a dict of lists, got {type(history).__name__}"
        )
    keys = list(dict.fromkeys(k for row in history.epochs for k in row))
    columns = {k: [row.get(k, np.nan) for row in history.epochs] for k in keys}
    return columns, list(history.steps)


def plot_history(history: Any, keys: Sequence[str] | None = None, ax: Axes | None = None) -> Axes:
    """Training curves against the epoch: one line per key, plus the per-step loss (thin line).

    ``history``: a :class:`coursekit.train.History` (or a dict ``{key: per-epoch values}``).
    ``keys``: which columns (default: all but epoch/step/time/lr). The per-step losses are placed
    at fractional epochs using each row's ``"step"``, so partial epochs line up.
    """
    columns, steps = _history_series(history)
    n_epochs = max((len(v) for v in columns.values()), default=0)
    keys = [k for k in columns if k not in _BOOKKEEPING] if keys is None else list(keys)
    missing = [k for k in keys if k not in columns]
    if missing:
        raise ValueError(f"keys {missing} not in the history; it has {sorted(columns)}")
    epochs = columns.get("epoch", list(range(1, n_epochs + 1)))
    ax = _get_ax(ax, figsize=(6, 4))
    if steps and "loss" in keys and "step" in columns:
        # Epoch e ends at global step columns["step"][e]; interpolate to place every step.
        x = np.interp(np.arange(1, len(steps) + 1), [0, *columns["step"]], [0, *epochs])
        ax.plot(x, steps, "-", color="0.7", lw=0.8, label="loss (per step)")
    for i, key in enumerate(keys):
        ax.plot(epochs[: len(columns[key])], columns[key], "o-", color=class_color(i + 1), label=key, ms=4)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(loc="best")
    return ax


def plot_curves(
    x: Sequence[float] | Mapping[str, Sequence[float]] | None,
    ys: Mapping[str, Sequence[float]],
    xlabel: str = "",
    ylabel: str = "",
    ax: Axes | None = None,
    logx: bool = False,
    title: str | None = None,
) -> Axes:
    """One line per entry of ``ys``: learning curves, precision-recall curves, PSNR vs iteration.

    ``x``: shared x values, a dict giving each curve its own x (PR curves: recall per class), or
    ``None`` for 1, 2, 3, ... Lengths must match. ``logx`` for sweeps over sizes or rates.
    """
    if not ys:
        raise ValueError("ys is empty: give {name: values}")
    ax = _get_ax(ax, figsize=(6, 4))
    for i, (name, y) in enumerate(ys.items()):
        xi = x[name] if isinstance(x, Mapping) else x
        xi = np.arange(1, len(y) + 1) if xi is None else _as_numpy(xi)
        if len(xi) != len(y):
            raise ValueError(f"curve {name!r} has {len(y)} values but x has {len(xi)}")
        ax.plot(
            xi,
            _as_numpy(y),
            "-",
            marker="o" if len(y) <= 20 else None,
            ms=4,
            color=class_color(i + 1),
            label=name,
        )
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return ax


# ----------------------------------------------------------------------------------------------
# Showing figures that update (LivePlot, widgets)
# ----------------------------------------------------------------------------------------------
def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure rendered to PNG bytes, whatever the matplotlib backend.

    ``IPython.display.Image(data=figure_to_png(fig))`` shows it even under ``MPLBACKEND=Agg``
    (CI, papermill), where ``display(fig)`` would print only ``<Figure size ...>``.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a notebook, papermill), False in scripts and pytest.

    Redrawing figures is only worth it there (LivePlot, widgets); elsewhere they just keep data.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
