"""Tests for coursekit.sliding: window arithmetic (the decks' numbers), crops, the loop, merging."""

import pytest
import torch

from coursekit.sliding import (
    IGNORE,
    assign_windows,
    decode_window_boxes,
    detections_from_maps,
    encode_window_boxes,
    extract_windows,
    image_pyramid,
    merge_detections,
    sliding_window_scores,
    window_boxes,
    window_grid,
)


def test_deck_001_overfeat_257_221_gives_2x2():
    assert window_grid(257, 221, 36) == (2, 2)  # OverFeat's subsampling: 257 = 221 + 36
    assert window_grid(257, 221, 32) == (2, 2)  # stride 32 also fits two, the last 4 px unvisited
    assert window_grid(257, 221, 37) == (1, 1)


def test_deck_002_256_64_stride_8():
    assert window_grid(256, 64, 8) == (25, 25)  # (256 - 64) / 8 + 1 = 25, not 32
    rows, cols = window_grid(256, 64, 8, padding=28)  # what gives the deck's 32 x 32
    assert rows * cols == 1024
    boxes = window_boxes(256, 64, 8, padding=28)
    assert boxes.shape == (32, 32, 4)
    assert boxes[0, 0].tolist() == [-28, -28, 36, 36]
    assert boxes[-1, -1].tolist() == [220, 220, 284, 284]


def test_window_grid_rejects_a_window_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        window_grid(32, 64, 8)
    with pytest.raises(ValueError, match="stride"):
        window_grid(64, 32, 0)


def test_extract_windows_matches_slicing():
    img = torch.rand(3, 20, 17)
    crops = extract_windows(img, (6, 5), (3, 4), padding=2)
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
    assert crops.shape[:2] == window_grid((20, 17), (6, 5), (3, 4), 2)
    for i in range(crops.shape[0]):
        for j in range(crops.shape[1]):
            assert torch.equal(crops[i, j], padded[:, 3 * i : 3 * i + 6, 4 * j : 4 * j + 5])


def test_sliding_window_scores_assembles_the_map_in_window_order():
    # A "model" whose score is the crop's top-left pixel: the map must be the image subsampled by the stride.
    img = torch.arange(3 * 12 * 12, dtype=torch.float32).reshape(3, 12, 12)

    def corner(crops):  # (B, C, k, k) -> (B, 1), (B, 2)
        return crops[:, :1, 0, 0], crops[:, :2, 0, 0]

    for batch_size in (1, 5, 1000):
        a, b = sliding_window_scores(corner, img, 4, 2, batch_size=batch_size)
        assert a.shape == (1, 5, 5) and b.shape == (2, 5, 5)
        assert torch.equal(a[0], img[0, 0:9:2, 0:9:2])
        assert torch.equal(b[1], img[1, 0:9:2, 0:9:2])


def test_image_pyramid_sizes_and_min_size():
    img = torch.rand(3, 100, 60)
    levels = image_pyramid(img, [1.0, 0.5, 0.25], min_size=20)
    assert [s for s, _ in levels] == [1.0, 0.5]  # 0.25 gives 15 px columns: too small for a 20 px window
    assert levels[0][1] is img and levels[1][1].shape == (3, 50, 30)


def test_encode_decode_window_boxes_roundtrip():
    windows = torch.tensor([[10.0, 20.0, 42.0, 52.0], [0.0, 0.0, 64.0, 64.0]])
    boxes = torch.tensor([[18.0, 24.0, 34.0, 50.0], [-8.0, 16.0, 32.0, 80.0]])
    t = encode_window_boxes(windows, boxes)
    assert torch.allclose(t[0], torch.tensor([0.25, 0.125, 0.75, 0.9375]))
    assert torch.allclose(decode_window_boxes(windows, t), boxes)
    # swapped corners from an untrained regressor still give a valid box
    swapped = decode_window_boxes(windows[:1], torch.tensor([[0.75, 0.9375, 0.25, 0.125]]))
    assert torch.allclose(swapped, boxes[:1])


def test_assign_windows_positive_negative_ignore():
    windows = torch.tensor([[0.0, 0, 10, 10], [2.0, 0, 12, 10], [6.0, 0, 16, 10], [50.0, 50, 60, 60]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    labels, targets = assign_windows(windows, gt, torch.tensor([7]), pos_iou=0.5, neg_iou=0.3)
    # IoUs: 1, 80/120, 40/160, 0
    assert labels.tolist() == [7, 7, 0, 0]
    assert torch.allclose(targets[0], torch.tensor([0.0, 0, 1, 1]))
    labels, _ = assign_windows(windows, gt, torch.tensor([7]), pos_iou=0.7, neg_iou=0.3)
    assert labels.tolist() == [7, IGNORE, 0, 0]


def test_merging_windows_returns_xyxy_boxes_in_image_coordinates_at_each_scale():
    # One 8x8 window classifier at stride 4 over a 16x16 image at scale 1 and over its 0.5 resize.
    probs1 = torch.zeros(3, 3, 3)  # (K=3, rows, cols), class 0 = background
    probs1[0] = 1.0
    probs1[:, 1, 2] = torch.tensor([0.1, 0.9, 0.0])  # window (1, 2): x 8..16, y 4..12 -> class 1
    probs1[:, 1, 1] = torch.tensor([0.2, 0.8, 0.0])  # window (1, 1): x 4..12, overlaps (1, 2) by 1/3
    offsets1 = torch.zeros(4, 3, 3)
    offsets1[:, 1, 2] = torch.tensor([0.25, 0.25, 0.75, 0.75])  # the object fills the window's centre
    offsets1[:, 1, 1] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    det1 = detections_from_maps(probs1, window_boxes(16, 8, 4, scale=1.0), offsets1, score_threshold=0.5)
    assert det1["boxes"].tolist() == [[4.0, 4.0, 12.0, 12.0], [10.0, 6.0, 14.0, 10.0]]

    probs2 = torch.zeros(3, 1, 1)  # the 8x8 resize holds one window: the whole image at scale 0.5
    probs2[2] = 0.7
    det2 = detections_from_maps(probs2, window_boxes(8, 8, 4, scale=0.5), None, score_threshold=0.5)
    assert det2["boxes"].tolist() == [[0.0, 0.0, 16.0, 16.0]] and det2["labels"].tolist() == [2]

    merged = merge_detections([det1, det2], iou_threshold=0.3)
    assert merged["scores"].tolist() == pytest.approx(
        [0.9, 0.8, 0.7]
    )  # the two class-1 boxes: IoU 8 / 72 = 0.11, both kept
    assert merged["labels"].tolist() == [1, 1, 2]
    assert merged["boxes"].tolist() == [
        [10.0, 6.0, 14.0, 10.0],
        [4.0, 4.0, 12.0, 12.0],
        [0.0, 0.0, 16.0, 16.0],
    ]
    merged = merge_detections([det1, det2], iou_threshold=0.1)
    assert merged["labels"].tolist() == [1, 2]  # now the 0.8 window is suppressed by the 0.9 one


def test_detections_from_maps_checks_shapes():
    with pytest.raises(ValueError, match="windows"):
        detections_from_maps(torch.rand(3, 2, 2), torch.zeros(3, 3, 4))
    with pytest.raises(ValueError, match="empty"):
        merge_detections([])


def test_merge_detections_keeps_only_the_best_candidates_before_nms():
    boxes = torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60], [100.0, 0, 110, 10]])
    det = {"boxes": boxes, "scores": torch.tensor([0.2, 0.9, 0.5]), "labels": torch.ones(3, dtype=torch.int64)}
    merged = merge_detections([det], pre_nms_top_n=2)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.5])
