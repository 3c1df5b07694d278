"""coursekit.boxes against torchvision.ops on random, degenerate and bad inputs."""

import pytest
import torch
import torchvision.ops as tvops
from torchvision.models.detection._utils import BoxCoder

from coursekit import boxes as B


def random_boxes(n: int, seed: int, size: float = 100.0, min_wh: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + min_wh
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("in_fmt", B.FORMATS)
@pytest.mark.parametrize("out_fmt", B.FORMATS)
def test_box_convert_matches_torchvision(in_fmt, out_fmt):
    xyxy = random_boxes(50, 0)
    boxes = tvops.box_convert(xyxy, "xyxy", in_fmt)
    torch.testing.assert_close(B.box_convert(boxes, in_fmt, out_fmt), tvops.box_convert(boxes, in_fmt, out_fmt))


def test_box_convert_round_trip_and_known_values():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert B.box_convert(box, "xyxy", "xywh").tolist() == [[10, 20, 20, 40]]
    assert B.box_convert(box, "xyxy", "cxcywh").tolist() == [[20, 40, 20, 40]]
    assert B.box_convert(B.box_convert(box, "xyxy", "cxcywh"), "cxcywh", "xyxy").tolist() == box.tolist()
    assert B.box_convert(torch.zeros(0, 4), "xyxy", "xywh").shape == (0, 4)


def test_box_convert_bad_input():
    with pytest.raises(ValueError, match="unknown box format"):
        B.box_convert(torch.zeros(1, 4), "xyxy", "yxyx")
    with pytest.raises(ValueError, match=r"Tensor\[..., 4\]"):
        B.box_convert(torch.zeros(3, 5), "xyxy", "xywh")
    with pytest.raises(ValueError, match="negative width"):
        B.box_convert(torch.tensor([[0.0, 0.0, -1.0, 2.0]]), "xywh", "xyxy")


@pytest.mark.parametrize("seed", range(5))
def test_iou_area_giou_match_torchvision(seed):
    b1, b2 = random_boxes(20, seed), random_boxes(30, seed + 100)
    torch.testing.assert_close(B.box_area(b1), tvops.box_area(b1))
    torch.testing.assert_close(B.box_iou(b1, b2), tvops.box_iou(b1, b2))
    torch.testing.assert_close(B.generalized_box_iou(b1, b2), tvops.generalized_box_iou(b1, b2))


def test_iou_special_cases():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    same, half, apart, inside = (
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        torch.tensor([[5.0, 0.0, 15.0, 10.0]]),
        torch.tensor([[20.0, 20.0, 30.0, 30.0]]),
        torch.tensor([[2.0, 2.0, 7.0, 7.0]]),
    )
    assert B.box_iou(a, same).item() == 1.0
    assert B.box_iou(a, half).item() == pytest.approx(50 / 150)
    assert B.box_iou(a, apart).item() == 0.0
    assert B.box_iou(a, inside).item() == pytest.approx(25 / 100)
    assert B.generalized_box_iou(a, apart).item() == pytest.approx(0 - (900 - 200) / 900)
    assert B.box_iou(torch.zeros(0, 4), a).shape == (0, 1)
    assert B.box_iou(a, torch.zeros(0, 4)).shape == (1, 0)
    # two zero-area boxes: 0/0, NaN like torchvision
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert torch.isnan(B.box_iou(point, point)).item() and torch.isnan(tvops.box_iou(point, point)).item()


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(3, 5), r"shape \[N, 4\]"),
        (torch.zeros(4), r"shape \[N, 4\]"),
        (torch.zeros(2, 4, dtype=torch.int64), "floating-point"),
        (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), "NaN"),
        (torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "x2 < x1"),
        ([[0, 0, 1, 1]], "torch.Tensor"),
    ],
)
def test_bad_boxes_raise_clear_errors(bad, message):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=message):
        B.box_iou(bad, good)
    with pytest.raises(ValueError, match=message):
        B.nms(bad, torch.ones(len(bad)), 0.5)


def _clustered(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes jittered around a few centres, so that NMS really has to suppress."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(5, 2, generator=g) * 200
    c = centres[torch.randint(0, 5, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 6
    wh = 20 + torch.rand(n, 2, generator=g) * 30
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    return boxes, torch.rand(n, generator=g)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_torchvision(seed, thr):
    boxes, scores = _clustered(200, seed)
    expected = tvops.nms(boxes, scores, thr)
    assert len(expected) < 200 or thr == 1.0  # the case must actually suppress something
    assert torch.equal(B.nms(boxes, scores, thr), expected)


@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_matches_torchvision(seed):
    boxes, scores = _clustered(300, seed)
    idxs = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(B.batched_nms(boxes, scores, idxs, 0.5), tvops.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("block", [1, 7, 64])
def test_nms_blocks_give_the_greedy_result(monkeypatch, block):
    # NMS resolves blocks of boxes and suppresses across them; any block size must give the same answer
    monkeypatch.setattr(B, "_NMS_BLOCK", block)
    monkeypatch.setattr(B, "_SWEEP_MAX_PAIRS", 0)  # the sweep declines: every case goes by blocks
    boxes, scores = _clustered(300, 11)
    idxs = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(11))
    for thr in (0.3, 0.5, 0.7):
        assert torch.equal(B.nms(boxes, scores, thr), tvops.nms(boxes, scores, thr))
        assert torch.equal(B.batched_nms(boxes, scores, idxs, thr), tvops.batched_nms(boxes, scores, idxs, thr))


def test_nms_thousands_of_boxes_match_torchvision():
    boxes, scores = _clustered(3000, 3)  # 12 blocks of the default size
    assert torch.equal(B.nms(boxes, scores, 0.5), tvops.nms(boxes, scores, 0.5))
    # batched: all classes in one pass with cross-class IoUs masked; torchvision loops per class above 1,000 boxes
    idxs = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(B.batched_nms(boxes, scores, idxs, 0.5), tvops.batched_nms(boxes, scores, idxs, 0.5))


def test_nms_degenerate_inputs():
    empty = torch.zeros(0, 4)
    assert B.nms(empty, torch.zeros(0), 0.5).tolist() == []
    assert B.batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).tolist() == []
    one = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert B.nms(one, torch.tensor([0.3]), 0.5).tolist() == [0]
    # ties in score keep input order; identical boxes suppress each other
    same = one.repeat(4, 1)
    tied = torch.full((4,), 0.5)
    assert B.nms(same, tied, 0.5).tolist() == tvops.nms(same, tied, 0.5).tolist() == [0]
    # zero-area boxes: IoU is NaN, never suppresses, as in torchvision
    points = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    s = torch.tensor([0.9, 0.8, 0.7])
    assert B.nms(points, s, 0.5).tolist() == tvops.nms(points, s, 0.5).tolist()
    # many exact score ties on random boxes
    boxes, _ = _clustered(100, 3)
    scores = torch.randint(0, 3, (100,)).float()
    assert torch.equal(B.nms(boxes, scores, 0.4), tvops.nms(boxes, scores, 0.4))


def test_nms_bad_scores():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="one per box"):
        B.nms(boxes, torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="floating point"):
        B.nms(boxes, torch.ones(1, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        B.batched_nms(boxes, torch.ones(1), torch.ones(1), 0.5)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_box_coder(weights):
    gt, proposals = random_boxes(40, 1, min_wh=1.0), random_boxes(40, 2, min_wh=1.0)
    coder = BoxCoder(weights)
    deltas = B.encode_boxes(gt, proposals, weights)
    torch.testing.assert_close(deltas, coder.encode_single(gt, proposals))
    torch.testing.assert_close(B.decode_boxes(deltas, proposals, weights), coder.decode_single(deltas, proposals))
    torch.testing.assert_close(B.decode_boxes(deltas, proposals, weights), gt, atol=1e-4, rtol=1e-4)


def test_decode_clamps_wild_deltas():
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = B.decode_boxes(torch.tensor([[0.0, 0.0, 1e6, 1e6]]), proposals)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="must match"):
        B.encode_boxes(proposals, proposals.repeat(2, 1))


def test_decode_moves_the_boxes_to_the_deltas_device():
    # Found on a GPU (notebook 05): SSD's anchors were made on the CPU, its deltas came from CUDA. The meta
    # device stands in for CUDA: boxes left on the CPU raise the same "two devices" error there.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 30.0]])
    out = B.decode_boxes(torch.zeros(2, 4, device="meta"), anchors)
    assert out.device.type == "meta" and out.shape == (2, 4)


@pytest.mark.parametrize("seed", range(3))
def test_paired_box_iou_is_the_diagonal_of_torchvisions_box_iou_and_broadcasts(seed):
    a, b = random_boxes(50, seed, min_wh=0.5), random_boxes(50, seed + 100, min_wh=0.5)
    paired = B.paired_box_iou(a, b)
    torch.testing.assert_close(paired, tvops.box_iou(a, b).diagonal())
    torch.testing.assert_close(B.paired_box_iou(a[:, None], b[None]), tvops.box_iou(a, b))  # broadcast: every pair
    empty = torch.zeros(1, 4)
    assert B.paired_box_iou(empty, empty).item() == 0.0  # not NaN: used inside losses


@pytest.mark.parametrize("seed", range(4))
def test_nms_sweep_edge_cases_match_torchvision(seed):
    # Ties in x and in score, touching edges, identical and zero-width/zero-area boxes, a negative threshold
    # (the sweep declines: boxes apart would suppress), many classes: same indices as torchvision.
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 40, (300, 2), generator=g).float()
    wh = torch.randint(0, 12, (300, 2), generator=g).float()  # zero widths and heights included
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[10:20] = boxes[0]  # identical boxes
    scores = torch.randint(0, 5, (300,), generator=g).float()  # many ties
    idxs = torch.randint(0, 7, (300,), generator=g)
    for thr in (-0.5, 0.0, 0.1, 0.5, 0.9):
        assert torch.equal(B.nms(boxes, scores, thr), tvops.nms(boxes, scores, thr)), thr
        if thr >= 0:  # below 0, torchvision's coordinate trick lets classes suppress each other (IoU 0 > thr)
            assert torch.equal(B.batched_nms(boxes, scores, idxs, thr), tvops.batched_nms(boxes, scores, idxs, thr))


def test_x_overlapping_pairs_are_every_intersecting_pair_once():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 20], 1)
    by_left, counts, cols = B._x_overlapping_pairs(boxes)
    first, second = by_left.repeat_interleave(counts), by_left[cols]
    found = {(min(a, b), max(a, b)) for a, b in zip(first.tolist(), second.tolist())}
    assert len(found) == len(first)  # each pair once
    inter = tvops.box_iou(boxes, boxes) > 0
    expected = {(a, b) for a, b in inter.triu(diagonal=1).nonzero().tolist()}
    assert expected <= found  # every intersecting pair is a candidate
