"""coursekit.widgets driven headless (values set from code), plus one run inside a real kernel."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as W
import matplotlib.pyplot as plt
import nbformat
import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvops
from matplotlib.patches import Rectangle
from nbclient import NotebookClient

from coursekit import widgets as CW
from coursekit.headless import guard_lost_wakeups


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------------------------
# slider_plot
# ----------------------------------------------------------------------------------------------
def test_slider_plot_builds_controls_and_redraws_on_change():
    calls = []

    def draw(ax, n, sigma, mode):
        calls.append((n, sigma, mode))
        ax.plot(range(n))
        return f"n={n} sigma={sigma:.2f} mode={mode}"

    sp = CW.slider_plot(draw, n=(1, 10, 1, 3), sigma=(0.0, 1.0, 0.05, 0.5), mode=["a", "b"])
    assert isinstance(sp.controls["n"], W.IntSlider) and isinstance(sp.controls["sigma"], W.FloatSlider)
    assert isinstance(sp.controls["mode"], W.Dropdown) and isinstance(sp, W.VBox)
    assert calls == [(3, 0.5, "a")] and sp.text == "n=3 sigma=0.50 mode=a"
    # A student moving one slider: one redraw, on a cleared axes.
    sp.controls["n"].value = 7
    assert calls[-1] == (7, 0.5, "a") and sp.redraws == 2 and len(sp.ax.lines) == 1
    # update() sets several at once with a single redraw.
    assert sp.update(n=2, sigma=0.25, mode="b") == "n=2 sigma=0.25 mode=b"
    assert sp.redraws == 3 and sp.values == {"n": 2, "sigma": 0.25, "mode": "b"}


def test_slider_plot_rejects_bad_specs_and_values():
    draw = lambda ax, a: None
    for spec, msg in (((1, 0), "below"), (("a", 1), "numbers"), ((0, 1, 0.1, 5), "outside"), ([], "empty")):
        with pytest.raises(ValueError, match=msg):
            CW.slider_plot(draw, a=spec)
    with pytest.raises(ValueError, match="at least one"):
        CW.slider_plot(draw)
    sp = CW.slider_plot(draw, a=(0.0, 1.0))
    assert sp.controls["a"].step == pytest.approx(0.01) and sp.text == ""
    with pytest.raises(ValueError, match="no slider named"):
        sp.update(b=1)
    with pytest.raises(ValueError, match="range"):
        sp.update(a=3.0)
    custom = W.IntText(value=4)
    assert CW.slider_plot(draw, a=custom).controls["a"] is custom


# ----------------------------------------------------------------------------------------------
# box_regression_metrics and the IoU widget of notebook 02
# ----------------------------------------------------------------------------------------------
def test_box_regression_metrics_against_torchvision_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        gt = torch.cat([torch.rand(2, generator=g) * 50, torch.rand(2, generator=g) * 30 + 1])
        pred = torch.cat([torch.rand(2, generator=g) * 50, torch.rand(2, generator=g) * 30 + 1])
        for fmt in ("cxcywh", "xywh"):
            m = CW.box_regression_metrics(gt, pred, fmt)
            a, b = (tvops.box_convert(t[None].double(), fmt, "xyxy") for t in (gt, pred))
            assert m["iou"] == pytest.approx(float(tvops.box_iou(a, b)))
            d = (pred - gt).double()
            assert m["l1"] == pytest.approx(float(d.abs().sum()))
            assert m["l2"] == pytest.approx(float((d**2).sum()))
            assert m["smooth_l1"] == pytest.approx(
                float(F.smooth_l1_loss(pred, gt, reduction="sum")), rel=1e-5
            )


def test_box_regression_metrics_known_values():
    same = CW.box_regression_metrics([5, 5, 10, 10], [5, 5, 10, 10])
    assert same == {"iou": 1.0, "l1": 0.0, "l2": 0.0, "smooth_l1": 0.0}
    assert CW.box_regression_metrics([5, 5, 10, 10], [50, 50, 10, 10])["iou"] == 0.0
    half = CW.box_regression_metrics([5, 5, 10, 10], [10, 5, 10, 10])  # shifted by half a width
    assert half["iou"] == pytest.approx(1 / 3)  # 50 / (100 + 100 - 50)
    assert (half["l1"], half["l2"], half["smooth_l1"]) == (5.0, 25.0, 4.5)
    # smooth L1: quadratic below 1 px (0.5**2 / 2), linear above (2 - 0.5).
    assert CW.box_regression_metrics([5, 5, 10, 10], [5.5, 7, 10, 10])["smooth_l1"] == pytest.approx(
        0.125 + 1.5
    )
    # The same two boxes read as top-left xywh: identical corners, so IoU 1 either way.
    assert CW.box_regression_metrics([0, 0, 10, 10], [0, 0, 10, 10], "xywh")["iou"] == 1.0
    with pytest.raises(ValueError, match="fmt"):
        CW.box_regression_metrics([0, 0, 1, 1], [0, 0, 1, 1], "xyxy")
    with pytest.raises(ValueError, match="negative"):
        CW.box_regression_metrics([0, 0, -1, 1], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="4 numbers"):
        CW.box_regression_metrics([0, 0, 1], [0, 0, 1, 1])


def test_box_iou_widget_text_follows_the_sliders():
    w = CW.box_iou_widget([32, 32, 20, 20], image=torch.rand(3, 64, 80))
    assert set(w.controls) == {"x", "y", "w", "h"} and w.controls["x"].max == 80 and w.controls["y"].max == 64
    assert w.values == {"x": 37.0, "y": 37.0, "w": 20.0, "h": 20.0}  # default: shifted a quarter size
    assert "IoU = 1.000" in w.update(x=32, y=32)
    assert "L1 = 0.0" in w.text and "L2 = 0.0" in w.text
    assert "IoU = 0.333" in w.update(x=42)  # half a width to the right
    assert "L1 = 10.0 | L2 = 100.0 | smooth L1 = 9.5" in w.text
    assert "IoU = 0.000" in w.update(x=75)
    # The figure: image plus exactly two boxes, ground truth (green) and prediction (red).
    boxes = [p for p in w.ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == 2 and len(w.ax.images) == 1
    assert (boxes[1].get_x(), boxes[1].get_width()) == (65.0, 20.0)
    assert "IoU = 0.000" in w.ax.get_title()


def test_box_iou_widget_xywh_default_canvas_and_errors():
    w = CW.box_iou_widget([10, 10, 20, 20], pred_box=[20, 10, 20, 20], fmt="xywh")
    assert "IoU = 0.333" in w.text
    assert w.ax.images[0].get_array().shape[:2] == (61, 61)  # canvas: twice the box's far corner
    with pytest.raises(ValueError, match="positive width"):
        CW.box_iou_widget([10, 10, 0, 20])
    with pytest.raises(ValueError, match="fmt"):
        CW.box_iou_widget([10, 10, 5, 5], fmt="xyxy")


def test_image_picker_calls_back_with_key_and_image():
    imgs = {"red": torch.zeros(3, 4, 4), "green": torch.ones(3, 4, 4)}
    seen = []

    def on_change(key, img):
        seen.append((key, float(img.mean())))
        return f"picked {key}"

    p = CW.image_picker(imgs, on_change)
    assert p.values == {"image": "red"} and p.text == "picked red"
    assert p.update(image="green") == "picked green" and seen == [("red", 0.0), ("green", 1.0)]
    assert p.ax.get_title() == "green" and len(p.ax.images) == 1
    listed = CW.image_picker([torch.rand(3, 4, 4), torch.rand(4, 4)])
    assert listed.values == {"image": 0} and listed.controls["image"].label == "0"
    assert listed.update(image=1) == "" and listed.ax.images[0].get_array().shape == (4, 4)
    with pytest.raises(ValueError, match="at least one"):
        CW.image_picker([])


# ----------------------------------------------------------------------------------------------
# Inside a real Jupyter kernel (what a notebook and papermill see)
# ----------------------------------------------------------------------------------------------
KERNEL_CODE = [
    "import torch, coursekit.widgets as CW\nw = CW.box_iou_widget([32, 32, 20, 20])\nw.update(x=42, y=32)\nw",
    "from torch.utils.data import DataLoader, TensorDataset\n"
    "from coursekit import train as T\n"
    "torch.manual_seed(0)\n"
    "m = torch.nn.Linear(2, 2)\n"
    "data = DataLoader(TensorDataset(torch.randn(64, 2), torch.randint(0, 2, (64,))), batch_size=4)\n"
    "live = T.LivePlot(every=2)\n"
    "T.Trainer(m, torch.optim.SGD(m.parameters(), 0.1), device='cpu', callbacks=[live]).fit(data, 2)\n"
    "print('draws', live.draws)",
]


def test_in_a_kernel_widgets_render_and_liveplot_updates_one_figure_in_place():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in KERNEL_CODE])
    guard_lost_wakeups()  # the widget-cell hang: coursekit/headless.py
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    widget_cell, train_cell = nb.cells
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget_cell.outputs)
    # The widget's Output holds the figure and the metrics text (stored in the widget state).
    state = str(nb.metadata.get("widgets", {}))
    assert "IoU = 0.333" in state and "image/png" in state
    # LivePlot: 32 steps, redrawn every 2, but a single figure output (updated in place), no spam.
    images = [o for o in train_cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1
    assert any("draws 17" in o.get("text", "") for o in train_cell.outputs)
