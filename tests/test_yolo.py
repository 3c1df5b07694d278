"""YOLO v1: the network (coursekit.models.yolo); targets, loss and decoding (coursekit.detection)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from coursekit.detection import (
    yolo_cells_to_xyxy,
    yolo_decode,
    yolo_decode_targets,
    yolo_encode_targets,
    yolo_loss,
    yolo_split_output,
    yolo_step,
)
from coursekit.models.blocks import TinyDarknet
from coursekit.models.yolo import YOLO

IMAGE, S, B, C = 96, 6, 2, 3


def _boxes_in_distinct_cells() -> tuple[torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([[4.0, 6.0, 30.0, 20.0], [40.0, 40.0, 90.0, 95.0], [60.0, 2.0, 70.0, 12.0]])
    return boxes, torch.tensor([1, 3, 2])


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.log(p / (1 - p))


def _perfect_raw(target: torch.Tensor) -> torch.Tensor:
    """Raw logits whose activations equal the target: box 0 of each cell exact with confidence 1
    (IoU 1), box 1 elsewhere with confidence 0, the right class with probability ~1."""
    raw = torch.zeros(S, S, B * 5 + C)
    has = target[..., 0] > 0
    raw[..., 0:4] = _logit(torch.where(has[..., None], target[..., 1:5], torch.full_like(target[..., 1:5], 0.5)))
    raw[..., 4] = torch.where(has, 30.0, -30.0)
    raw[..., 5:9] = _logit(torch.full((S, S, 4), 0.3))
    raw[..., 9] = -30.0
    raw[..., 10:] = 30.0 * target[..., 5:]
    return raw[None]


def test_encode_then_decode_returns_the_ground_truth():
    boxes, labels = _boxes_in_distinct_cells()
    target = yolo_encode_targets(boxes, labels, S, IMAGE, C)
    assert target.shape == (S, S, 5 + C)
    assert int(target[..., 0].sum()) == 3
    got_boxes, got_labels = yolo_decode_targets(target, IMAGE)
    order = got_boxes[:, 0].argsort()
    expected = boxes[boxes[:, 0].argsort()]
    torch.testing.assert_close(got_boxes[order], expected, atol=1e-4, rtol=0)
    assert got_labels[order].tolist() == labels[boxes[:, 0].argsort()].tolist()


def test_responsible_cell_holds_the_centre():
    # centre (50, 20) -> column 50 // 16 = 3, row 20 // 16 = 1; offsets (50 - 48) / 16, (20 - 16) / 16
    target = yolo_encode_targets(torch.tensor([[40.0, 10.0, 60.0, 30.0]]), torch.tensor([2]), S, IMAGE, C)
    assert target[1, 3, 0] == 1 and target[..., 0].sum() == 1
    torch.testing.assert_close(target[1, 3, 1:3], torch.tensor([2 / 16, 4 / 16]))
    torch.testing.assert_close(target[1, 3, 3:5], torch.tensor([(20 / 96) ** 0.5] * 2))
    assert target[1, 3, 5:].tolist() == [0.0, 1.0, 0.0]


def test_two_centres_in_one_cell_keep_the_larger_box():
    boxes = torch.tensor([[2.0, 2.0, 12.0, 12.0], [0.0, 0.0, 16.0, 14.0]])  # both centred in cell (0, 0)
    target = yolo_encode_targets(boxes, torch.tensor([1, 2]), S, IMAGE, C)
    got, labels = yolo_decode_targets(target, IMAGE)
    assert len(got) == 1 and labels.tolist() == [2]
    torch.testing.assert_close(got[0], boxes[1], atol=1e-4, rtol=0)


def test_encode_rejects_bad_labels():
    boxes, _ = _boxes_in_distinct_cells()
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        yolo_encode_targets(boxes, torch.tensor([0, 1, 2]), S, IMAGE, C)
    with pytest.raises(ValueError, match="int Tensor"):
        yolo_encode_targets(boxes, torch.tensor([1.0, 1.0, 2.0]), S, IMAGE, C)


def test_cells_to_xyxy_matches_box_convert():
    g = torch.Generator().manual_seed(0)
    cells = torch.rand(2, S, S, B, 4, generator=g)
    got = yolo_cells_to_xyxy(cells, IMAGE)
    i, j, b = 4, 1, 1
    x, y, sw, sh = cells[0, i, j, b].tolist()
    cx, cy, w, h = (j + x) * 16, (i + y) * 16, sw**2 * IMAGE, sh**2 * IMAGE
    expected = torchvision.ops.box_convert(torch.tensor([[cx, cy, w, h]]), "cxcywh", "xyxy")[0]
    torch.testing.assert_close(got[0, i, j, b], expected)


def test_loss_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    boxes, labels = _boxes_in_distinct_cells()
    target = yolo_encode_targets(boxes, labels, S, IMAGE, C)[None]
    raw = _perfect_raw(target[0])
    perfect = yolo_loss(raw, target, IMAGE, B)
    assert perfect["loss"] < 1e-6, {k: float(v) for k, v in perfect.items()}
    shifts = [("loss_xy", 0, 1.5), ("loss_wh", 2, 1.5), ("loss_obj", 4, -30.0), ("loss_cls", 10, -60.0)]
    for key, index, shift in shifts:
        wrong = raw.clone()
        wrong[..., index] += shift  # move one quantity in every cell
        losses = yolo_loss(wrong, target, IMAGE, B)
        assert losses[key] > 1e-3, key
        assert losses["loss"] > perfect["loss"] + 1e-3
    empty = raw.clone()
    empty[..., 9] = 0.0  # the spare predictor now says "object" with probability 0.5 everywhere
    assert yolo_loss(empty, target, IMAGE, B)["loss_noobj"] == pytest.approx(0.5 * S * S * 0.25, rel=1e-4)


def test_loss_weights_follow_the_paper():
    boxes, labels = _boxes_in_distinct_cells()
    target = yolo_encode_targets(boxes, labels, S, IMAGE, C)[None]
    raw = torch.randn(1, S, S, B * 5 + C, generator=torch.Generator().manual_seed(1))
    base = yolo_loss(raw, target, IMAGE, B, lambda_coord=1.0, lambda_noobj=1.0)
    paper = yolo_loss(raw, target, IMAGE, B)
    torch.testing.assert_close(paper["loss_xy"], 5 * base["loss_xy"])
    torch.testing.assert_close(paper["loss_noobj"], 0.5 * base["loss_noobj"])
    torch.testing.assert_close(paper["loss_cls"], base["loss_cls"])


def test_decode_returns_sorted_boxes_inside_the_image_after_nms():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(3, S, S, B * 5 + C, generator=g) * 3
    dets = yolo_decode(raw, B, IMAGE, score_threshold=0.05, iou_threshold=0.5)
    assert len(dets) == 3
    out = yolo_split_output(raw, B)
    for n, d in enumerate(dets):
        boxes, scores, labels = d["boxes"], d["scores"], d["labels"]
        assert len(boxes) > 0
        assert (boxes >= 0).all() and (boxes <= IMAGE).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert (scores[:-1] >= scores[1:]).all() and (scores > 0.05).all()
        assert labels.min() >= 1 and labels.max() <= C
        iou = torchvision.ops.box_iou(boxes, boxes)
        same = labels[:, None] == labels[None, :]
        assert not (iou.triu(1)[same.triu(1)] > 0.5).any()
        # reference: torchvision's batched_nms on the same candidates
        all_boxes = yolo_cells_to_xyxy(out.boxes[n], IMAGE).clamp(0, IMAGE).reshape(-1, 4)
        p, c = out.class_probs[n].max(-1)
        all_scores = (out.confidence[n] * p[..., None]).reshape(-1)
        all_labels = (c[..., None].expand(S, S, B) + 1).reshape(-1)
        keep = all_scores > 0.05
        ref = torchvision.ops.batched_nms(all_boxes[keep], all_scores[keep], all_labels[keep], 0.5)
        torch.testing.assert_close(boxes, all_boxes[keep][ref])


def test_network_shapes_and_input_checks():
    model = YOLO(C, image_size=IMAGE, grid_size=S, num_boxes=B, widths=(8, 8, 16, 16))
    assert model(torch.rand(2, 3, IMAGE, IMAGE)).shape == (2, S, S, B * 5 + C)
    with pytest.raises(ValueError, match="built for 96x96"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="power of 2"):
        YOLO(C, image_size=96, grid_size=5)
    assert TinyDarknet((4, 8, 8)).strides == (2, 4, 8)
    dets = model.detect(torch.rand(2, 3, IMAGE, IMAGE))
    assert len(dets) == 2 and model.training


def test_training_step_decreases_the_loss_on_one_batch():
    torch.manual_seed(0)
    model = YOLO(C, image_size=IMAGE, grid_size=S, num_boxes=B, widths=(8, 16, 16, 32))
    boxes, labels = _boxes_in_distinct_cells()
    batch = (torch.rand(2, 3, IMAGE, IMAGE), [{"boxes": boxes, "labels": labels}] * 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = yolo_step(model, batch, torch.device("cpu"))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]
