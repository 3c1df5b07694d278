"""ipywidgets building blocks: a figure redrawn by sliders, the IoU widget, an image picker.

Every widget here is also a plain Python object you can drive without a browser: construct it
headless (pytest, papermill), call ``.update(x=..., w=...)`` and read ``.values`` / ``.text`` /
``.fig``. In a notebook the figure and the text appear in an ``ipywidgets.Output`` below the
sliders and are redrawn whenever a slider moves.

- :func:`slider_plot`: the generic piece (``fn(ax, **values) -> str | None``).
- :func:`box_iou_widget`: notebook 02, move a predicted box over a ground-truth box and watch IoU
  and the L1 / L2 / smooth-L1 regression losses of ``(x, y, w, h)`` change.
- :func:`image_picker`: a dropdown that shows the chosen image (and tells a callback).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, Literal, get_args

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from torch import Tensor

from coursekit.boxes import box_convert, paired_box_iou
from coursekit.viz import draw_boxes, figure_to_png, in_notebook, show_image, to_numpy_image

__all__ = ["SliderPlot", "slider_plot", "box_regression_metrics", "box_iou_widget", "image_picker"]

DrawFn = Callable[..., "str | None"]
# A slider spec: (min, max, step, value), (min, max, step) or (min, max); a list / dict of options
# makes a dropdown; a ready-made ipywidget is used as it is.
SliderSpec = tuple | list | Mapping | W.ValueWidget


def _is_int(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


# Words spelled in capitals in a slider's label ("iou_threshold" -> "IoU threshold").
_LABEL_WORDS = {"iou": "IoU", "nms": "NMS", "lr": "LR", "ssd": "SSD", "yolo": "YOLO", "pck": "PCK", "psnr": "PSNR"}


def readable_label(name: str) -> str:
    """A slider's label from its argument name: ``"score_threshold"`` -> ``"score threshold"``."""
    return " ".join(_LABEL_WORDS.get(word.lower(), word) for word in name.split("_") if word)


def _label_kwargs(label: str) -> dict[str, Any]:
    # The label gets its full width (ipywidgets' default cuts it at about 10 characters: "score_thr..."),
    # and the control grows with it so that the slider's track keeps its length.
    return {"description": label, "style": {"description_width": "initial"},
            "layout": W.Layout(width=f"{max(300, 210 + 8 * len(label))}px")}


def _make_control(name: str, spec: SliderSpec, continuous: bool) -> W.ValueWidget:
    """An IntSlider / FloatSlider / Dropdown labelled after ``name`` from its spec."""
    if isinstance(spec, W.ValueWidget):
        return spec
    label = readable_label(name)
    if isinstance(spec, (list, Mapping)):
        if not spec:
            raise ValueError(f"slider {name!r}: the list of options is empty")
        return W.Dropdown(options=spec, **_label_kwargs(label))
    if not isinstance(spec, tuple) or not 2 <= len(spec) <= 4 or not all(isinstance(v, Real) for v in spec):
        raise ValueError(
            f"slider {name!r}: give (min, max, step, value) numbers, a list of options "
            f"or a widget, got {spec!r}"
        )
    lo, hi = spec[0], spec[1]
    if lo >= hi:
        raise ValueError(f"slider {name!r}: min {lo} must be below max {hi}")
    integer = all(_is_int(v) for v in spec)
    step = spec[2] if len(spec) > 2 else (1 if integer else (hi - lo) / 100)
    value = spec[3] if len(spec) > 3 else lo
    if not lo <= value <= hi:
        raise ValueError(f"slider {name!r}: value {value} is outside [{lo}, {hi}]")
    cls = W.IntSlider if integer else W.FloatSlider
    return cls(min=lo, max=hi, step=step, value=value, continuous_update=continuous, **_label_kwargs(label))


class SliderPlot(W.VBox):
    """Sliders above a matplotlib figure that ``fn(ax, **values)`` redraws (see :func:`slider_plot`).

    Attributes: ``controls`` (name -> widget), ``output`` (the ``widgets.Output``), ``fig`` / ``ax``,
    ``values`` (the current values), ``text`` (what ``fn`` returned last time, printed under the
    figure), ``redraws`` (how many times ``fn`` ran).
    """

    def __init__(
        self,
        fn: DrawFn,
        controls: Mapping[str, W.ValueWidget],
        figsize: tuple[float, float] = (5, 5),
    ):
        self.fn = fn
        self.controls = dict(controls)
        self.output = W.Output()
        self.fig, self.ax = plt.subplots(figsize=figsize)
        plt.close(self.fig)  # shown through self.output only, never a second time by pyplot
        self.text: str = ""
        self.redraws = 0
        self._holding = False
        super().__init__(
            [W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")), self.output]
        )
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.redraw()

    @property
    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def _on_change(self, _change: Mapping[str, Any]) -> None:
        if not self._holding:
            self.redraw()

    def update(self, **values: Any) -> str:
        """Set several controls at once (one redraw), as a student moving sliders would; returns
        the new text. Values outside a slider's range raise ``ValueError``."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"no slider named {sorted(unknown)}; sliders: {list(self.controls)}")
        self._holding = True
        try:
            for name, value in values.items():
                control = self.controls[name]
                if hasattr(control, "min") and not control.min <= value <= control.max:
                    raise ValueError(
                        f"{name}={value} is outside the slider's range [{control.min}, {control.max}]"
                    )
                control.value = value
        finally:
            self._holding = False
        self.redraw()
        return self.text

    def redraw(self) -> None:
        """Call ``fn`` on a cleared axes with the current values; show figure and text."""
        self.ax.clear()
        self.text = self.fn(self.ax, **self.values) or ""
        self.redraws += 1
        if not in_notebook():
            return  # headless: keep fig and text for whoever asks, print nothing
        from IPython.display import Image, display

        with self.output:
            self.output.clear_output(wait=True)  # wait: no flicker between clear and redraw
            display(Image(data=figure_to_png(self.fig)))  # PNG renders under any backend, Agg included
            if self.text:
                print(self.text)


def slider_plot(
    fn: DrawFn,
    *,
    figsize: tuple[float, float] = (5, 5),
    continuous_update: bool = True,
    **sliders: SliderSpec,
) -> SliderPlot:
    """A figure redrawn by ``fn(ax, **values)`` whenever one of the ``sliders`` moves.

    Each keyword names an argument of ``fn`` and gives its control: ``(min, max, step, value)``
    (an ``IntSlider`` if all four are ints, else a ``FloatSlider``; ``step`` and ``value`` may be
    left out), a list or dict of options (a ``Dropdown``), or any ipywidget with a ``value``.
    ``fn`` draws on the (cleared) ``ax`` and may return a string, printed under the figure.

    Example (notebook 09, the noise level)::

        def show(ax, sigma):
            ax.imshow(noisy(img, sigma)); return f"PSNR = {psnr(...):.1f} dB"
        ck.widgets.slider_plot(show, sigma=(0.0, 0.5, 0.01, 0.1))
    """
    if not sliders:
        raise ValueError("slider_plot needs at least one slider, e.g. sigma=(0.0, 1.0, 0.05, 0.1)")
    controls = {name: _make_control(name, spec, continuous_update) for name, spec in sliders.items()}
    return SliderPlot(fn, controls, figsize=figsize)


# ----------------------------------------------------------------------------------------------
# Notebook 02: IoU and the regression losses of a box
# ----------------------------------------------------------------------------------------------
BoxFmt = Literal["cxcywh", "xywh"]
_BOX_FORMATS: tuple[str, ...] = get_args(BoxFmt)


def _to_xyxy(box: Tensor, fmt: str) -> Tensor:
    return box_convert(box[None], fmt, "xyxy")[0]


def box_regression_metrics(
    gt_box: Sequence[float] | Tensor, pred_box: Sequence[float] | Tensor, fmt: BoxFmt = "cxcywh"
) -> dict[str, float]:
    """IoU of two boxes and the regression losses between their ``(x, y, w, h)`` coordinates.

    Both boxes are given in ``fmt``: ``"cxcywh"`` (centre and size, what notebook 02's network
    regresses) or ``"xywh"`` (top-left corner and size). Losses are summed over the 4 coordinates,
    in pixels: ``L1 = sum |d|``, ``L2 = sum d**2`` (deck 000: S = sum (y_i - f(x_i))^2) and
    ``smooth L1`` (beta = 1: d**2 / 2 below 1 px, |d| - 1/2 above). Returns
    ``{"iou", "l1", "l2", "smooth_l1"}``.
    """
    if fmt not in _BOX_FORMATS:
        raise ValueError(f"fmt must be one of {_BOX_FORMATS}, got {fmt!r}")
    gt, pred = (torch.as_tensor(b, dtype=torch.float64).reshape(-1) for b in (gt_box, pred_box))
    for name, box in (("gt_box", gt), ("pred_box", pred)):
        if box.numel() != 4:
            raise ValueError(f"{name} must hold 4 numbers ({fmt}), got {box.numel()}")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(f"{name} = {box.tolist()} has a negative width or height; boxes are {fmt}")
    return {
        "iou": float(paired_box_iou(_to_xyxy(gt, fmt), _to_xyxy(pred, fmt))),
        "l1": float(F.l1_loss(pred, gt, reduction="sum")),
        "l2": float(F.mse_loss(pred, gt, reduction="sum")),
        "smooth_l1": float(F.smooth_l1_loss(pred, gt, reduction="sum", beta=1.0)),
    }


def _format_metrics(m: Mapping[str, float]) -> str:
    return (
        f"IoU = {m['iou']:.3f} | L1 = {m['l1']:.1f} | L2 = {m['l2']:.1f} | smooth L1 = {m['smooth_l1']:.1f}"
    )


def box_iou_widget(
    gt_box: Sequence[float] | Tensor,
    pred_box: Sequence[float] | Tensor | None = None,
    image: Any = None,
    *,
    fmt: BoxFmt = "cxcywh",
    canvas_size: tuple[int, int] | None = None,
) -> SliderPlot:
    """Sliders ``x, y, w, h`` move a predicted box (red) over a fixed ground-truth box (green).

    Below the figure: IoU, and the L1, L2 and smooth-L1 losses between the two ``(x, y, w, h)``
    (see :func:`box_regression_metrics`). Both boxes are given in ``fmt`` (default centre-size,
    as notebook 02 regresses them); ``pred_box`` defaults to the ground truth shifted by a quarter
    of its size. ``image`` (``Tensor[3, H, W]`` ...) is drawn underneath; without it a grey canvas
    of ``canvas_size = (H, W)`` (default: twice the box's extent) is used.
    Drive it headless with ``widget.update(x=..., y=..., w=..., h=...)`` and read ``widget.text``.
    """
    if fmt not in _BOX_FORMATS:
        raise ValueError(f"fmt must be one of {_BOX_FORMATS}, got {fmt!r}")
    gt = [float(v) for v in torch.as_tensor(gt_box, dtype=torch.float64).reshape(-1).tolist()]
    if len(gt) != 4 or gt[2] <= 0 or gt[3] <= 0:
        raise ValueError(f"gt_box must be 4 numbers ({fmt}) with positive width and height, got {gt}")
    gt_xyxy = _to_xyxy(torch.tensor(gt), fmt)
    image = _canvas(image, canvas_size, gt_xyxy)
    H, W_ = image.shape[-2:]
    if pred_box is None:
        pred_box = [gt[0] + gt[2] / 4, gt[1] + gt[3] / 4, gt[2], gt[3]]
    pred = [float(v) for v in torch.as_tensor(pred_box, dtype=torch.float64).reshape(-1).tolist()]
    if len(pred) != 4:
        raise ValueError(f"pred_box must be 4 numbers ({fmt}), got {pred}")

    def draw(ax: Axes, x: float, y: float, w: float, h: float) -> str:
        metrics = box_regression_metrics(gt, [x, y, w, h], fmt)
        show_image(image, ax=ax)
        draw_boxes(None, gt_xyxy[None], ax=ax, color="lime")
        draw_boxes(None, _to_xyxy(torch.tensor([x, y, w, h]), fmt)[None], ax=ax, color="red")
        ax.set_title(f"IoU = {metrics['iou']:.3f}  (green: ground truth, red: prediction)", fontsize=9)
        return _format_metrics(metrics)

    big = float(max(H, W_))
    return slider_plot(
        draw,
        x=(0.0, float(W_), 1.0, _clip(pred[0], 0.0, float(W_))),
        y=(0.0, float(H), 1.0, _clip(pred[1], 0.0, float(H))),
        w=(1.0, big, 1.0, _clip(pred[2], 1.0, big)),
        h=(1.0, big, 1.0, _clip(pred[3], 1.0, big)),
    )


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def _canvas(image: Any, canvas_size: tuple[int, int] | None, gt_xyxy: Tensor) -> Tensor:
    """The image under the boxes as ``Tensor[3, H, W]``: the given one, or a light-grey canvas."""
    if image is not None:
        arr = torch.as_tensor(to_numpy_image(image))
        return arr[None].expand(3, -1, -1) if arr.dim() == 2 else arr[..., :3].permute(2, 0, 1)
    if canvas_size is None:
        side = int(2 * float(gt_xyxy[2:].max())) + 1
        canvas_size = (side, side)
    return torch.full((3, *canvas_size), 0.9)


# ----------------------------------------------------------------------------------------------
# Choosing an image
# ----------------------------------------------------------------------------------------------
def image_picker(
    images: Mapping[str, Any] | Sequence[Any],
    on_change: Callable[[Any, Any], str | None] | None = None,
    *,
    figsize: tuple[float, float] = (4, 4),
) -> SliderPlot:
    """A dropdown that shows the chosen image and calls ``on_change(key, image)``.

    ``images``: ``{name: image}`` or a list (keys are then 0, 1, ...). ``on_change`` may draw
    nothing and return a string (e.g. the predicted class), printed under the image. The current
    key is ``picker.values["image"]``; select one headless with ``picker.update(image=key)``.
    """
    items = dict(images) if isinstance(images, Mapping) else dict(enumerate(images))
    if not items:
        raise ValueError("image_picker needs at least one image")
    options = {str(k): k for k in items}

    def draw(ax: Axes, image: Any) -> str | None:
        show_image(items[image], ax=ax, title=str(image))
        return on_change(image, items[image]) if on_change is not None else None

    control = W.Dropdown(options=options, **_label_kwargs("image"))
    return SliderPlot(draw, {"image": control}, figsize=figsize)
