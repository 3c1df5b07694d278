"""coursekit.viz: each drawing adds the expected artists, in the expected places and colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

from coursekit import viz as V
from coursekit.train import History


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def rects(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_class_color_is_fixed_distinct_and_background_black():
    assert V.class_color(0) == (0.0, 0.0, 0.0)
    colors = [V.class_color(i) for i in range(1, 21)]
    assert len(set(colors)) == 20 and V.class_color(21) == V.class_color(1)
    assert V.class_color(3) == V.class_color(3) and all(0 <= c <= 1 for c in V.class_color(7))
    with pytest.raises(ValueError):
        V.class_color(-1)


def test_to_numpy_image_layouts():
    t = torch.rand(3, 4, 5)
    np.testing.assert_allclose(V.to_numpy_image(t), t.permute(1, 2, 0).numpy())
    assert V.to_numpy_image(torch.rand(1, 4, 5)).shape == (4, 5)
    assert V.to_numpy_image(torch.rand(4, 5)).shape == (4, 5)
    u8 = np.full((4, 5, 3), 255, dtype=np.uint8)
    assert V.to_numpy_image(u8).max() == 1.0 and V.to_numpy_image(u8).dtype == np.float32
    assert V.to_numpy_image(torch.full((3, 2, 2), 2.0)).max() == 1.0  # clipped for display
    for bad in (torch.rand(5, 4, 4), torch.rand(2, 3, 4, 4), np.zeros((4, 4, 5))):
        with pytest.raises(ValueError, match="image"):
            V.to_numpy_image(bad)


def test_show_image():
    ax = V.show_image(torch.rand(3, 10, 12), title="x")
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (10, 12, 3) and ax.get_title() == "x"
    ax = V.show_image(torch.rand(10, 12))
    assert ax.images[0].get_cmap().name == "gray"


def test_draw_boxes_one_rectangle_per_box_at_the_right_place():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0], [40.0, 10.0, 63.0, 30.0]])
    ax = V.draw_boxes(
        torch.rand(3, 64, 64),
        boxes,
        labels=torch.tensor([1, 2, 1]),
        scores=[0.9, 0.5, 0.25],
        class_names=["bg", "cat", "dog"],
    )
    rs = rects(ax)
    assert len(rs) == 3
    assert (rs[0].get_x(), rs[0].get_y(), rs[0].get_width(), rs[0].get_height()) == (10, 20, 20, 40)
    assert [t.get_text() for t in ax.texts] == ["cat: 0.90", "dog: 0.50", "cat: 0.25"]
    # Colour by class: boxes 0 and 2 share class 1.
    assert rs[0].get_edgecolor()[:3] == pytest.approx(V.class_color(1))
    assert rs[1].get_edgecolor()[:3] == pytest.approx(V.class_color(2))


def test_draw_boxes_on_an_existing_ax_and_edge_cases():
    ax = V.draw_boxes(torch.rand(3, 32, 32), torch.tensor([[1.0, 1.0, 9.0, 9.0]]), color="lime")
    V.draw_boxes(None, np.array([[2.0, 2.0, 8.0, 8.0], [3.0, 3.0, 3.0, 3.0]]), ax=ax, color="red")
    assert len(rects(ax)) == 3 and len(ax.images) == 1 and not ax.texts
    assert rects(ax)[0].get_edgecolor()[:3] == pytest.approx(to_rgb("lime"))
    assert len(rects(V.draw_boxes(torch.rand(3, 8, 8), torch.zeros(0, 4)))) == 0
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        V.draw_boxes(torch.rand(3, 8, 8), torch.rand(2, 5))
    with pytest.raises(ValueError, match="xyxy"):
        V.draw_boxes(torch.rand(3, 8, 8), torch.tensor([[5.0, 5.0, 2.0, 8.0]]))
    with pytest.raises(ValueError, match="labels"):
        V.draw_boxes(torch.rand(3, 8, 8), torch.tensor([[1.0, 1.0, 2.0, 2.0]]), labels=[1, 2])
    with pytest.raises(ValueError, match="ax"):
        V.draw_boxes(None, torch.tensor([[1.0, 1.0, 2.0, 2.0]]))


def test_draw_masks_instance_overlay_colours_and_transparency():
    masks = torch.zeros(2, 1, 16, 16)  # Mask R-CNN layout [N, 1, H, W]
    masks[0, 0, :8, :8] = 0.9
    masks[1, 0, 8:, 8:] = 1.0
    ax = V.draw_masks(torch.rand(3, 16, 16), masks, alpha=0.4, labels=[3, 5])
    assert len(ax.images) == 2
    overlay = ax.images[1].get_array()
    assert overlay.shape == (16, 16, 4)
    assert tuple(overlay[0, 0, :3]) == pytest.approx(V.class_color(3))
    assert overlay[0, 0, 3] == pytest.approx(0.4)
    assert tuple(overlay[15, 15, :3]) == pytest.approx(V.class_color(5))
    assert overlay[0, 15, 3] == 0.0  # no mask there: transparent


def test_draw_masks_semantic_and_errors():
    seg = torch.zeros(8, 8, dtype=torch.int64)
    seg[2:4, 2:4] = 1
    seg[5:, 5:] = 2
    ax = V.draw_masks(torch.rand(3, 8, 8), seg)
    overlay = ax.images[1].get_array()
    assert overlay[0, 0, 3] == 0.0  # background transparent
    assert tuple(overlay[2, 2, :3]) == pytest.approx(V.class_color(1))
    assert tuple(overlay[6, 6, :3]) == pytest.approx(V.class_color(2))
    assert ((overlay[..., 3] > 0).sum()) == 4 + 9
    with pytest.raises(ValueError, match="resize"):
        V.draw_masks(torch.rand(3, 8, 9), seg)
    with pytest.raises(ValueError, match="alpha"):
        V.draw_masks(torch.rand(3, 8, 8), seg, alpha=2)


def test_draw_keypoints_skips_invisible_joints_and_their_limbs():
    kp = torch.tensor([[10.0, 5.0], [10.0, 15.0], [5.0, 25.0], [15.0, 25.0], [10.0, 30.0]])
    skeleton = [(0, 1), (1, 2), (1, 3), (1, 4)]
    ax = V.draw_keypoints(torch.rand(3, 40, 20), kp, visible=torch.tensor([1, 1, 0, 1, 1]), skeleton=skeleton)
    assert len(ax.lines) == 3  # the limb to joint 2 is not drawn
    scat = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scat) == 1 and scat[0].get_offsets().shape == (4, 2)
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[10, 5], [10, 15]])
    # torchvision layout [P, K, 3]: the third column is the visibility.
    kp3 = torch.cat([kp, torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0]])], dim=1)
    ax = V.draw_keypoints(torch.rand(3, 40, 20), torch.stack([kp3, kp3]), skeleton=skeleton)
    assert len(ax.lines) == 2 * 2 and sum(len(c.get_offsets()) for c in ax.collections) == 2 * 3
    with pytest.raises(ValueError, match="skeleton"):
        V.draw_keypoints(torch.rand(3, 40, 20), kp, skeleton=[(0, 5)])
    with pytest.raises(ValueError, match="visible"):
        V.draw_keypoints(torch.rand(3, 40, 20), kp, visible=[1, 0])


def test_draw_heatmap_is_resized_to_the_image_with_the_peak_in_place():
    hm = torch.zeros(3, 8, 8)  # one heatmap per joint; their maximum is shown
    hm[1, 2, 5] = 1.0
    ax = V.draw_heatmap(torch.rand(3, 32, 32), hm)
    assert len(ax.images) == 2
    shown = np.asarray(ax.images[1].get_array())
    assert shown.shape == (32, 32) and shown.max() == pytest.approx(1.0) and shown.min() == 0.0
    r, c = np.unravel_index(shown.argmax(), shown.shape)
    assert abs(r - (2 * 4 + 1.5)) <= 1 and abs(c - (5 * 4 + 1.5)) <= 1  # cell (2, 5) of 4x4 px
    alone = V.draw_heatmap(None, torch.rand(5, 6))
    assert alone.images[0].get_array().shape == (5, 6)
    with pytest.raises(ValueError, match="heatmap"):
        V.draw_heatmap(None, torch.rand(2, 2, 3, 3))


def test_show_grid():
    fig = V.show_grid(torch.rand(5, 3, 8, 8), titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5 and [ax.get_title() for ax in shown] == list("abcde")
    with pytest.raises(ValueError, match="titles"):
        V.show_grid([torch.rand(3, 4, 4)], titles=["a", "b"])


def test_plot_history_one_line_per_key_plus_step_losses():
    h = History(
        epochs=[
            {"epoch": 1, "step": 4, "loss": 1.0, "acc": 0.5, "lr": 0.1},
            {"epoch": 2, "step": 8, "loss": 0.5, "acc": 0.8, "lr": 0.1},
            {"epoch": 3, "step": 10, "loss": 0.3, "acc": 0.9, "lr": 0.1},
        ],  # partial 3rd epoch
        steps=[1.2, 1.0, 0.9, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3, 0.3],
    )
    ax = V.plot_history(h)
    assert [l.get_label() for l in ax.lines] == ["loss (per step)", "loss", "acc"]  # lr is bookkeeping
    x_steps = ax.lines[0].get_xdata()
    assert (
        x_steps[3] == pytest.approx(1.0)
        and x_steps[7] == pytest.approx(2.0)
        and x_steps[-1] == pytest.approx(3.0)
    )
    assert x_steps[8] == pytest.approx(2.5)
    ax = V.plot_history(h, keys=["acc"])
    assert [l.get_label() for l in ax.lines] == ["acc"]
    ax = h.plot(keys=["loss"])
    assert len(ax.lines) == 2
    ax = V.plot_history({"val_acc": [0.1, 0.5]})
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2])
    with pytest.raises(ValueError, match="not in the history"):
        V.plot_history(h, keys=["psnr"])


def test_plot_curves():
    ax = V.plot_curves(
        [1, 10, 100], {"scratch": [0.2, 0.4, 0.6], "fine-tune": [0.5, 0.7, 0.9]}, "examples", "acc", logx=True
    )
    assert [l.get_label() for l in ax.lines] == ["scratch", "fine-tune"]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "examples"
    assert to_rgb(ax.lines[1].get_color()) == pytest.approx(V.class_color(2))
    pr = V.plot_curves(
        {"cat": [0.0, 0.5, 1.0], "dog": [0.0, 1.0]}, {"cat": [1.0, 0.8, 0.4], "dog": [1.0, 0.5]}
    )
    np.testing.assert_array_equal(pr.lines[1].get_xdata(), [0.0, 1.0])
    with pytest.raises(ValueError, match="x has"):
        V.plot_curves([1, 2], {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="empty"):
        V.plot_curves(None, {})
