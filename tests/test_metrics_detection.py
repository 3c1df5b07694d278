"""coursekit.metrics.detection against pycocotools' COCOeval (random and edge cases) and known VOC APs."""

import numpy as np
import pytest
import torch

from coursekit.metrics import detection as D

STAT_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
STAT_KEYS += ["mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


def random_case(
    seed: int,
    num_images: int = 8,
    per_image: int = 12,
    num_classes: int = 4,
    size: int = 160,
    segm: bool = False,
    score_levels: int | None = None,
):
    """Random GTs (sides 3..size px: small, medium and large) and noisy detections of them, plus
    false positives, wrong classes, images with no GT and images with no detection."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(num_images):
        n_gt = 0 if i == 1 else int(torch.randint(1, per_image, (1,), generator=g))
        n_dt = 0 if i == 2 else int(torch.randint(1, per_image + 4, (1,), generator=g))
        wh = torch.exp(torch.empty(n_gt, 2).uniform_(np.log(3), np.log(size * 0.9), generator=g))
        xy = torch.rand(n_gt, 2, generator=g) * (size - wh)
        gt = torch.cat([xy, xy + wh], 1)
        gt_labels = torch.randint(1, num_classes + 1, (n_gt,), generator=g)
        src = torch.randint(0, max(n_gt, 1), (n_dt,), generator=g)
        if n_gt:
            jitter = torch.randn(n_dt, 4, generator=g) * (gt[src, 2:] - gt[src, :2]).repeat(1, 2) * 0.12
            boxes, labels = gt[src] + jitter, gt_labels[src].clone()
        else:
            boxes, labels = torch.rand(n_dt, 4, generator=g) * size, torch.ones(n_dt, dtype=torch.int64)
        fp = torch.rand(n_dt, generator=g) < 0.25  # pure false positives anywhere
        boxes[fp] = torch.rand(int(fp.sum()), 4, generator=g) * size
        boxes = torch.cat([boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], 1)
        boxes = boxes.clamp(0, size)
        wrong = torch.rand(n_dt, generator=g) < 0.15
        labels[wrong] = torch.randint(1, num_classes + 1, (int(wrong.sum()),), generator=g)
        if i == 0:
            labels[-1] = num_classes + 1  # a class with predictions but no GT
        scores = torch.rand(n_dt, generator=g)
        if score_levels:
            scores = torch.randint(0, score_levels, (n_dt,), generator=g).float() / score_levels
        pred = {"boxes": boxes, "scores": scores, "labels": labels}
        target = {"boxes": gt, "labels": gt_labels}
        if segm:
            pred["masks"] = boxes_to_masks(boxes, size, g)
            target["masks"] = boxes_to_masks(gt, size, g)
        preds.append(pred)
        targets.append(target)
    return preds, targets


def boxes_to_masks(boxes: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Ellipses inside the boxes with some random pixels flipped: masks whose IoU is not the box IoU.

    numpy, not torch: torch spreads these mid-sized ops over threads, which is slow on a busy CPU."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g)))
    b = boxes.double().numpy()[:, :, None, None]
    yy, xx = np.mgrid[:size, :size] + 0.5
    rx, ry = np.maximum(b[:, 2] - b[:, 0], 1) / 2, np.maximum(b[:, 3] - b[:, 1], 1) / 2
    inside = ((xx - (b[:, 0] + b[:, 2]) / 2) / rx) ** 2 + ((yy - (b[:, 1] + b[:, 3]) / 2) / ry) ** 2 <= 1
    noise = rng.random((len(boxes), size, size)) < 0.02
    return torch.from_numpy((inside ^ noise).astype(np.uint8))


def assert_matches_coco(preds, targets, iou_type="bbox", iou_thresholds=None, max_detections=100, tol=1e-6,
                        area_from="iou_type"):
    ours = D.mean_average_precision(preds, targets, iou_type, iou_thresholds, max_detections, area_from)
    ev = D.evaluate_detections(preds, targets, iou_type, iou_thresholds, max_detections, area_from)
    ref = D.pycocotools_map(preds, targets, iou_type, iou_thresholds, max_detections, area_from)
    np.testing.assert_allclose(ev.precision.numpy(), ref.eval["precision"], atol=tol, rtol=0)
    np.testing.assert_allclose(ev.recall.numpy(), ref.eval["recall"], atol=tol, rtol=0)
    if max_detections == 100:  # pycocotools' summarize() hard-codes maxDets=100
        for key, value in zip(STAT_KEYS, ref.stats, strict=True):
            assert ours[key] == pytest.approx(value, abs=tol), key
    # per-class AP: pycocotools' precision averaged per class, -1 for classes without GT
    p = ref.eval["precision"][:, :, :, 0, -1]
    expected = [p[:, :, k][p[:, :, k] > -1].mean() if (p[:, :, k] > -1).any() else -1 for k in range(p.shape[2])]
    np.testing.assert_allclose(ours["map_per_class"].numpy(), expected, atol=tol, rtol=0)
    assert ours["classes"].tolist() == ref.params.catIds
    return ours


@pytest.mark.parametrize("seed", range(5))
def test_bbox_matches_pycocotools_random(seed):
    preds, targets = random_case(seed, num_classes=2 + seed % 3)
    ours = assert_matches_coco(preds, targets)
    assert 0 < ours["map"] < 1  # a non-trivial case
    assert (ours["map_per_class"] == -1).any()  # the class with predictions but no GT


@pytest.mark.parametrize("seed", range(3))
def test_segm_matches_pycocotools_random(seed):
    preds, targets = random_case(seed + 10, num_images=5, per_image=8, num_classes=3, size=128, segm=True)
    ours = assert_matches_coco(preds, targets, "segm")
    bbox = D.mean_average_precision(preds, targets, "bbox")
    assert ours["map"] != pytest.approx(bbox["map"])  # mask IoU really is used


def test_ties_in_scores():
    preds, targets = random_case(3, num_images=10, score_levels=3)
    assert_matches_coco(preds, targets)


def test_custom_thresholds_and_max_detections():
    preds, targets = random_case(4, num_images=6, per_image=20)
    assert_matches_coco(preds, targets, iou_thresholds=[0.3, 0.5, 0.9], max_detections=10)
    out = D.mean_average_precision(preds, targets, iou_thresholds=[0.3, 0.9])
    assert out["map_50"] == -1 and out["map_75"] == -1  # thresholds not evaluated


def test_more_detections_than_max_detections():
    preds, targets = random_case(5, num_images=4, per_image=40, num_classes=2)
    g = torch.Generator().manual_seed(1)
    for p in preds:  # 8 noisy copies of every detection: well over 100 per image and class
        n = 8 * len(p["labels"])
        p["boxes"] = torch.cat([p["boxes"]] * 8) + torch.rand(n, 1, generator=g)
        p["scores"], p["labels"] = torch.rand(n, generator=g), torch.cat([p["labels"]] * 8)
    assert max(int((p["labels"] == 1).sum()) for p in preds) > 100
    assert_matches_coco(preds, targets)


def test_crowd_given_area_duplicates_and_degenerate_boxes():
    preds, targets = random_case(6, num_images=6)
    g = torch.Generator().manual_seed(0)
    for t in targets:
        n = len(t["labels"])
        t["iscrowd"] = torch.rand(n, generator=g) < 0.3
        t["area"] = (t["boxes"][:, 2:] - t["boxes"][:, :2]).prod(1) * torch.rand(n, generator=g) * 2
    # identical GT boxes (IoU ties: COCOeval gives the detection the last one) and zero-area boxes
    targets[0]["boxes"] = torch.cat([targets[0]["boxes"], targets[0]["boxes"][:2]])
    targets[0]["labels"] = torch.cat([targets[0]["labels"], targets[0]["labels"][:2]])
    targets[0]["iscrowd"] = torch.cat([targets[0]["iscrowd"], torch.tensor([False, False])])
    targets[0]["area"] = torch.cat([targets[0]["area"], targets[0]["area"][:2]])
    preds[3]["boxes"][0, 2] = preds[3]["boxes"][0, 0]
    assert_matches_coco(preds, targets, area_from="target")
    assert_matches_coco(preds, targets)  # the default ignores the given area: the box decides the size


def test_segm_crowd():
    preds, targets = random_case(7, num_images=4, per_image=8, size=96, segm=True)
    for t in targets:
        t["iscrowd"] = torch.arange(len(t["labels"])) % 3 == 0
    assert_matches_coco(preds, targets, "segm")


def test_perfect_predictions():
    _, targets = random_case(8, num_images=5)
    targets[0]["boxes"][0] = torch.tensor([10.0, 10.0, 150.0, 150.0])  # at least one large GT
    preds = [{**t, "scores": torch.rand(len(t["labels"]))} for t in targets]
    out = assert_matches_coco(preds, targets)
    for key in [k for k in STAT_KEYS if k not in ("mar_1", "mar_10")]:  # several GTs per image and class
        assert out[key] == pytest.approx(1.0, abs=1e-12), key  # tp / (tp + fp + eps)
    assert (out["map_per_class"] == 1).all()


def test_class_with_gt_but_no_predictions_scores_zero():
    preds, targets = random_case(9, num_images=4)
    for t in targets[2:]:  # (image 1 has no GT)
        t["labels"][0] = 99  # class 99 is never predicted
    out = assert_matches_coco(preds, targets)
    assert out["map_per_class"][out["classes"] == 99].item() == 0.0


def test_all_targets_empty_gives_minus_one():
    preds, _ = random_case(10, num_images=3)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in preds]
    out = assert_matches_coco(preds, targets)
    assert all(out[k] == -1 for k in STAT_KEYS)


def test_all_predictions_empty():
    """pycocotools cannot take zero detections; the answer is known: nothing found, AP 0."""
    _, targets = random_case(11, num_images=3)
    preds = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}] * 3
    out = D.mean_average_precision(preds, targets)
    assert out["map"] == 0 and out["map_50"] == 0 and out["mar_100"] == 0
    assert out["classes"].tolist() == torch.cat([t["labels"] for t in targets]).unique().tolist()
    empty = D.mean_average_precision(preds, [{"boxes": torch.zeros(0, 4), "labels": preds[0]["labels"]}] * 3)
    assert empty["map"] == -1 and len(empty["classes"]) == 0


def test_known_small_case():
    """One class, 2 GTs; detections: TP (0.9), FP (0.8), TP (0.7) -> precision 1, 1/2, 2/3 at recall .5, .5, 1."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [20.0, 20.0, 30.0, 30.0]])
    preds = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.ones(3, dtype=torch.int64)}]
    targets = [{"boxes": gt, "labels": torch.ones(2, dtype=torch.int64)}]
    out = D.mean_average_precision(preds, targets)
    # envelope: 1 for recall <= 0.5 (51 thresholds), 2/3 above (50 thresholds)
    assert out["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert out["mar_1"] == 0.5 and out["mar_10"] == 1.0 and out["map_small"] == out["map"]
    assert out["map_medium"] == -1  # no medium GT


def test_iou_tie_goes_to_the_last_gt():
    """Detection A overlaps GT1 and GT2 with IoU exactly 0.5; COCOeval gives it the *last* one (GT2),
    which leaves GT1 for detection B: 2 TPs at IoU 0.5. Taking the first GT would give 1 TP."""
    gt = torch.tensor([[0.0, 0.0, 20.0, 10.0], [10.0, 0.0, 30.0, 10.0]])
    boxes = torch.tensor([[10.0, 0.0, 20.0, 10.0], [0.0, 0.0, 20.0, 10.0]])
    ones = torch.ones(2, dtype=torch.int64)
    preds = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": ones}]
    out = assert_matches_coco(preds, [{"boxes": gt, "labels": ones}])
    assert out["map_50"] == pytest.approx(1.0)


def test_bad_inputs():
    preds, targets = random_case(12, num_images=2)
    with pytest.raises(ValueError, match="2 images but targets has 1"):
        D.mean_average_precision(preds, targets[:1])
    with pytest.raises(ValueError, match="iou_type"):
        D.mean_average_precision(preds, targets, iou_type="keypoints")
    bad = [{**preds[0], "boxes": torch.zeros(len(preds[0]["labels"]), 5)}, preds[1]]
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        D.mean_average_precision(bad, targets)
    with pytest.raises(ValueError, match="masks"):
        D.mean_average_precision(preds, targets, iou_type="segm")
    bad = [{**preds[0], "scores": preds[0]["scores"][:-1]}, preds[1]]
    with pytest.raises(ValueError, match="scores"):
        D.mean_average_precision(bad, targets)
    with pytest.raises(ValueError, match="no 'labels'"):
        D.mean_average_precision([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}], targets[:1])
    floats = [{**p, "masks": torch.rand(len(p["labels"]), 8, 8)} for p in preds]
    with pytest.raises(ValueError, match="bool or uint8"):
        D.mean_average_precision(floats, [{**t, "masks": torch.zeros(len(t["labels"]), 8, 8)} for t in targets], "segm")
    with pytest.raises(ValueError, match="max_detections"):
        D.mean_average_precision(preds, targets, max_detections=5)


@pytest.mark.parametrize("name", ["mAP boxes", "mAP masks, 100 images 128 px", "mAP masks, 50 images 400 px"])
def test_faster_than_pycocotools(name):
    from coursekit import benchmark as bm

    (case,) = [c for c in bm.CASES if c.name.startswith(name)]
    (row,) = bm.ops_table([case], repeats=1)  # the benchmark's own timing, on the same inputs for both
    print(f"\n{row}")
    assert row.ratio < 1.0  # ours / pycocotools


# ----------------------------------------------------------------------------------------- VOC AP
def voc_ap_reference(rec, prec, use_07_metric=False):
    """py-faster-rcnn's voc_eval.voc_ap, verbatim apart from names."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def test_voc_ap_known_values():
    rec, prec = torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.5])
    assert D.voc_ap(rec, prec) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert D.voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 0.5) / 11)  # t = 0..0.5 | 0.6..1
    # TP, FP, TP with 2 GTs: all-point AP = 0.5 * 1 + 0.5 * 2/3
    assert D.voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 1 / 3)
    # recall stops at 0.3: 11-point gives t = 0, 0.1, 0.2, 0.3 -> 4/11 (t = 0.3 counts: recall >= 0.3 holds)
    assert D.voc_ap([0.1, 0.3], [1.0, 1.0], use_07_metric=True) == pytest.approx(4 / 11)
    assert D.voc_ap([0.1, 0.3], [1.0, 1.0]) == pytest.approx(0.3)
    assert D.voc_ap([], []) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_voc_ap_matches_reference(seed):
    rng = np.random.default_rng(seed)
    tp = rng.random(40) < 0.5
    rec, prec = np.cumsum(tp) / 7 / 3, np.cumsum(tp) / np.arange(1, 41)  # recall k/21: never exactly 0.k
    rec = np.minimum(rec, 1.0)
    for use_07 in (False, True):
        assert D.voc_ap(torch.from_numpy(rec), torch.from_numpy(prec), use_07) == pytest.approx(
            voc_ap_reference(rec, prec, use_07), abs=1e-12
        )


def test_voc_ap_bad_input():
    with pytest.raises(ValueError, match="same length"):
        D.voc_ap([0.5, 1.0], [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.voc_ap([0.5, 1.5], [1.0, 1.0])


def test_mask_iou_equals_the_obvious_count_and_handles_empty_masks():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 40, 30, generator=g) > 0.6
    b = torch.rand(4, 40, 30, generator=g) > 0.5
    a[1] = False  # an empty mask
    b[2, :, :15] = False  # a mask confined to one half: its extent is smaller than the image
    inter = (a[:, None] & b[None]).flatten(2).sum(-1).double()
    union = (a[:, None] | b[None]).flatten(2).sum(-1).double()
    expected = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    torch.testing.assert_close(D.mask_iou(a, b), expected)
    assert D.mask_iou(a[:0], b).shape == (0, 4)
    with pytest.raises(ValueError, match="one size"):
        D.mask_iou(a, b[:, :20])


def test_size_buckets_follow_the_scored_thing_unless_asked_for_the_targets_area():
    box = torch.tensor([[0.0, 0.0, 40.0, 40.0]])  # 1,600 px box: medium
    target = {"boxes": box, "labels": torch.tensor([1]), "area": torch.tensor([300.0])}  # a thin mask: small
    pred = {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    by_box = D.mean_average_precision([pred], [target])
    assert by_box["map_medium"] == pytest.approx(1.0) and by_box["map_small"] == -1.0
    by_area = D.mean_average_precision([pred], [target], area_from="target")
    assert by_area["map_small"] == pytest.approx(1.0) and by_area["map_medium"] == -1.0
    with pytest.raises(ValueError, match="area_from"):
        D.mean_average_precision([pred], [target], area_from="mask")
