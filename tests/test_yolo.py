"""YOLO v1 and YOLOv2: the networks (coursekit.models.yolo); targets, losses and decoding (coursekit.detection);
YOLOv2's anchor priors (coursekit.anchors.kmeans_anchors)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from coursekit.anchors import kmeans_anchors, mean_best_iou, wh_iou
from coursekit.detection import (
    yolo_cells_to_xyxy,
    yolo_decode,
    yolo_decode_targets,
    yolo_encode_targets,
    yolo_loss,
    yolo_split_output,
    yolo_step,
    yolov2_cells_to_xyxy,
    yolov2_decode,
    yolov2_decode_targets,
    yolov2_encode_targets,
    yolov2_loss,
    yolov2_split_output,
    yolov2_step,
)
from coursekit.models.blocks import TinyDarknet
from coursekit.models.yolo import YOLO, YOLOv2

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


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_training_step_decreases_the_loss_on_one_batch(version):
    torch.manual_seed(0)
    if version == "v1":
        model, step = YOLO(C, image_size=IMAGE, grid_size=S, num_boxes=B, widths=(8, 16, 16, 32)), yolo_step
    else:
        model, step = YOLOv2(C, ANCHORS, image_size=IMAGE, widths=(8, 16, 16, 32), head_channels=32), yolov2_step
    boxes, labels = _boxes_in_distinct_cells()
    batch = (torch.rand(2, 3, IMAGE, IMAGE), [{"boxes": boxes, "labels": labels}] * 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = step(model, batch, torch.device("cpu"))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]


# ============================================================================ YOLOv2: anchor priors
def _slow_wh_iou(a, b):
    inter = min(a[0], b[0]) * min(a[1], b[1])
    return inter / (a[0] * a[1] + b[0] * b[1] - inter)


def _slow_kmeans(wh, k, seed, iterations=300):
    """Lloyd's k-means with distance 1 - IoU, written out with Python loops (the reference)."""
    points = wh.tolist()
    first = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:k].tolist()
    centroids = [list(points[i]) for i in first]
    assignment = None
    for _ in range(iterations):
        new = [max(range(k), key=lambda c: (_slow_wh_iou(p, centroids[c]), -c)) for p in points]
        if new == assignment:
            break
        assignment = new
        for c in range(k):
            members = [p for p, a in zip(points, assignment) if a == c]
            if members:
                centroids[c] = [sum(m[0] for m in members) / len(members), sum(m[1] for m in members) / len(members)]
    return torch.tensor(sorted(centroids, key=lambda c: c[0] * c[1]))


def test_wh_iou_is_the_iou_of_centred_boxes():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 2, generator=g) * 40 + 1, torch.rand(3, 2, generator=g) * 40 + 1
    expected = torch.tensor([[_slow_wh_iou(x, y) for y in b.tolist()] for x in a.tolist()])
    torch.testing.assert_close(wh_iou(a, b), expected)
    assert wh_iou(torch.tensor([[10.0, 20.0]]), torch.tensor([[20.0, 10.0]])).item() == pytest.approx(1 / 3)


def test_kmeans_anchors_match_a_plain_loop_and_sort_by_area():
    g = torch.Generator().manual_seed(0)
    wh = torch.rand(200, 2, generator=g) * 40 + 5
    for k, seed in [(1, 0), (3, 1), (5, 2)]:
        got = kmeans_anchors(wh, k, seed=seed)
        torch.testing.assert_close(got, _slow_kmeans(wh, k, seed), rtol=1e-5, atol=1e-4)
        area = got.prod(dim=1)
        assert (area[1:] >= area[:-1]).all()
    assert kmeans_anchors(wh, 1).squeeze().tolist() == pytest.approx(wh.mean(dim=0).tolist(), rel=1e-5)


def test_kmeans_anchors_find_separated_shapes_and_fit_better_than_random_priors():
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[8.0, 8.0], [10.0, 30.0], [40.0, 20.0]])
    wh = torch.cat([s * (1 + 0.05 * torch.randn(50, 2, generator=g)) for s in shapes])
    found = kmeans_anchors(wh, 3, seed=0)
    torch.testing.assert_close(found, shapes, rtol=0.05, atol=0)
    assert mean_best_iou(wh, found) > 0.9
    assert mean_best_iou(wh, found) > mean_best_iou(wh, wh[:3])  # three boxes of the first shape


def test_kmeans_anchors_reject_bad_input():
    with pytest.raises(ValueError, match=r"Tensor\[N, 2\]"):
        kmeans_anchors(torch.rand(10, 4), 3)
    with pytest.raises(ValueError, match="positive"):
        kmeans_anchors(torch.tensor([[1.0, 2.0], [0.0, 3.0]]), 1)
    with pytest.raises(ValueError, match="k must be between 1 and the number of boxes"):
        kmeans_anchors(torch.rand(4, 2) + 1, 5)


# ======================================================================= YOLOv2: targets, loss, decoding
S2, ANCHORS = 12, torch.tensor([[10.0, 10.0], [12.0, 28.0], [40.0, 40.0]])
K = len(ANCHORS)


def test_v2_encode_picks_the_centre_cell_and_the_closest_anchor_and_decodes_back():
    boxes = torch.tensor([[40.0, 10.0, 52.0, 38.0], [2.0, 2.0, 44.0, 46.0], [60.0, 60.0, 70.0, 69.0]])
    labels = torch.tensor([2, 1, 3])
    target = yolov2_encode_targets(boxes, labels, ANCHORS, S2, IMAGE, C)
    assert target.shape == (S2, S2, K, 5 + C) and int(target[..., 0].sum()) == 3
    # box 0: centre (46, 24) -> column 5, row 3 (8 px cells), shape 12 x 28 -> anchor 1
    assert target[3, 5, 1, 0] == 1
    torch.testing.assert_close(target[3, 5, 1, 1:5], torch.tensor([6 / 8, 0.0, 0.0, 0.0]))
    assert target[3, 5, 1, 5:].tolist() == [0.0, 1.0, 0.0]
    got, got_labels = yolov2_decode_targets(target, ANCHORS, IMAGE)
    order, expected = got[:, 0].argsort(), boxes[:, 0].argsort()
    torch.testing.assert_close(got[order], boxes[expected], atol=1e-4, rtol=0)
    assert got_labels[order].tolist() == labels[expected].tolist()


def test_v2_two_centres_in_one_cell_are_both_kept_when_their_shapes_differ():
    # both centres at (44, 44), in cell (5, 5); a 6 x 6 digit (anchor 0) and a 12 x 28 one (anchor 1)
    boxes = torch.tensor([[41.0, 41.0, 47.0, 47.0], [38.0, 30.0, 50.0, 58.0]])
    target = yolov2_encode_targets(boxes, torch.tensor([1, 2]), ANCHORS, S2, IMAGE, C)
    assert len(yolov2_decode_targets(target, ANCHORS, IMAGE)[0]) == 2
    assert target[5, 5, 0, 0] == 1 and target[5, 5, 1, 0] == 1
    v1 = yolo_encode_targets(boxes, torch.tensor([1, 2]), S2, IMAGE, C)
    assert len(yolo_decode_targets(v1, IMAGE)[0]) == 1
    same = torch.tensor([[0.0, 0.0, 7.0, 7.0], [1.0, 1.0, 6.0, 6.0]])  # same cell, same anchor: the larger stays
    got, _ = yolov2_decode_targets(yolov2_encode_targets(same, torch.tensor([1, 2]), ANCHORS, S2, IMAGE, C),
                                   ANCHORS, IMAGE)
    torch.testing.assert_close(got, same[:1], atol=1e-4, rtol=0)


def test_v2_encode_rejects_bad_input():
    boxes = torch.tensor([[4.0, 6.0, 30.0, 20.0]])
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        yolov2_encode_targets(boxes, torch.tensor([4]), ANCHORS, S2, IMAGE, C)
    with pytest.raises(ValueError, match=r"anchors must be a Tensor\[K, 2\]"):
        yolov2_encode_targets(boxes, torch.tensor([1]), torch.rand(3, 4), S2, IMAGE, C)
    with pytest.raises(ValueError, match=r"Tensor\[N, S, S, K, 5 \+ C\]"):
        yolov2_split_output(torch.zeros(1, S2, S2, 5 + C))


def test_v2_cells_to_xyxy_follows_the_paper():
    g = torch.Generator().manual_seed(0)
    xy, twh = torch.rand(2, S2, S2, K, 2, generator=g), torch.randn(2, S2, S2, K, 2, generator=g)
    got = yolov2_cells_to_xyxy(xy, twh, ANCHORS, IMAGE)
    i, j, a = 7, 2, 1
    cx, cy = (j + xy[1, i, j, a, 0]) * 8, (i + xy[1, i, j, a, 1]) * 8
    w, h = ANCHORS[a, 0] * twh[1, i, j, a, 0].exp(), ANCHORS[a, 1] * twh[1, i, j, a, 1].exp()
    expected = torchvision.ops.box_convert(torch.stack([cx, cy, w, h])[None], "cxcywh", "xyxy")[0]
    torch.testing.assert_close(got[1, i, j, a], expected)


def _v2_perfect_raw(target: torch.Tensor) -> torch.Tensor:
    """Raw output whose activations equal the target: exact boxes, confidence 1 where an object is, 0 elsewhere."""
    raw = torch.zeros(target.shape)
    has = target[..., 0] > 0
    raw[..., 0:2] = _logit(torch.where(has[..., None], target[..., 1:3], torch.full_like(target[..., 1:3], 0.5)))
    raw[..., 2:4] = target[..., 3:5]
    raw[..., 4] = torch.where(has, 30.0, -30.0)
    raw[..., 5:] = 30.0 * target[..., 5:]
    return raw


def test_v2_loss_is_zero_for_a_perfect_prediction_and_each_term_reacts():
    boxes, labels = _boxes_in_distinct_cells()
    target = yolov2_encode_targets(boxes, labels, ANCHORS, S2, IMAGE, C)[None]
    raw = _v2_perfect_raw(target)
    perfect = yolov2_loss(raw, target, ANCHORS, IMAGE)
    assert perfect["loss"] < 1e-6, {k: float(v) for k, v in perfect.items()}
    for key, index, shift in [("loss_xy", 0, 1.5), ("loss_wh", 2, 0.5), ("loss_obj", 4, -30.0), ("loss_cls", 6, 60.0)]:
        wrong = raw.clone()
        wrong[..., index] += shift
        assert yolov2_loss(wrong, target, ANCHORS, IMAGE)[key] > 1e-3, key
    empty = raw.clone()
    empty[..., 4] = torch.where(target[..., 0] > 0, 30.0, 0.0)  # every box without object says 0.5
    got = yolov2_loss(empty, target, ANCHORS, IMAGE, ignore_iou=1.0)["loss_noobj"]  # 1.0: no box is ignored
    assert got == pytest.approx(0.5 * (S2 * S2 * K - 3) * 0.25, rel=1e-4)  # every box but the 3 responsible


def test_v2_loss_ignores_a_good_box_that_is_not_responsible():
    boxes, labels = torch.tensor([[40.0, 40.0, 80.0, 80.0]]), torch.tensor([1])  # centre (60, 60): cell (7, 7)
    target = yolov2_encode_targets(boxes, labels, ANCHORS, S2, IMAGE, C)[None]
    raw = _v2_perfect_raw(target)
    raw[0, 7, 7, 1, :4] = raw[0, 7, 7, 2, :4]  # anchor 1 of the same cell predicts the same box...
    raw[0, 7, 7, 1, 2:4] += (ANCHORS[2] / ANCHORS[1]).log()
    raw[0, 7, 7, 1, 4] = 0.0  # ...with confidence 0.5
    assert yolov2_loss(raw, target, ANCHORS, IMAGE)["loss_noobj"] < 1e-6  # IoU 1 > 0.6: ignored
    assert yolov2_loss(raw, target, ANCHORS, IMAGE, ignore_iou=1.0)["loss_noobj"] == pytest.approx(0.5 * 0.25)


def test_v2_loss_rejects_mismatched_targets():
    raw = torch.zeros(1, S2, S2, K, 5 + C)
    with pytest.raises(ValueError, match="targets must be a Tensor"):
        yolov2_loss(raw, torch.zeros(1, S2, S2, K, 5), ANCHORS, IMAGE)
    with pytest.raises(ValueError, match="K = 3"):
        yolov2_loss(raw, raw, ANCHORS[:2], IMAGE)


def test_v2_decode_scores_every_class_of_every_box_like_torchvision_batched_nms():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, S2, S2, K, 5 + C, generator=g) * 3
    dets = yolov2_decode(raw, ANCHORS, IMAGE, score_threshold=0.05, iou_threshold=0.5, topk_candidates=300)
    out = yolov2_split_output(raw)
    for n, d in enumerate(dets):
        assert len(d["boxes"]) > 0 and (d["scores"][:-1] >= d["scores"][1:]).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= IMAGE).all()
        boxes = yolov2_cells_to_xyxy(out.xy[n], out.twh[n], ANCHORS, IMAGE).clamp(0, IMAGE).reshape(-1, 4)
        scores = out.confidence[n].reshape(-1, 1) * out.class_probs[n].reshape(-1, C)  # (S*S*K, C)
        rows, cols = (scores > 0.05).nonzero(as_tuple=True)
        s = scores[rows, cols]
        top = s.topk(min(300, len(s))).indices
        b, s, lab = boxes[rows[top]], s[top], cols[top] + 1
        keep = torchvision.ops.batched_nms(b, s, lab, 0.5)[:100]
        torch.testing.assert_close(d["boxes"], b[keep])
        assert d["labels"].tolist() == lab[keep].tolist()


def test_v2_network_shapes_and_input_checks():
    model = YOLOv2(C, ANCHORS, image_size=IMAGE, stride=8, widths=(8, 8, 16, 16), head_channels=16)
    assert model(torch.rand(2, 3, IMAGE, IMAGE)).shape == (2, S2, S2, K, 5 + C)
    assert YOLOv2(C, ANCHORS, IMAGE, stride=16, widths=(8, 8, 16, 16))(torch.rand(1, 3, IMAGE, IMAGE)).shape[1] == 6
    with pytest.raises(ValueError, match="built for 96x96"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="stride must be one of"):
        YOLOv2(C, ANCHORS, IMAGE, stride=32, widths=(8, 8, 16, 16))
    with pytest.raises(ValueError, match="anchors as K >= 1 positive"):
        YOLOv2(C, [[10.0, -1.0]])
    dets = model.detect(torch.rand(2, 3, IMAGE, IMAGE))
    assert len(dets) == 2 and model.training
    assert "anchors" in model.state_dict()  # the priors travel with the weights
