"""coursekit.anchors vs torchvision: AnchorGenerator, DefaultBoxGenerator, Matcher, BoxCoder, SSD, sampler."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from coursekit.anchors import (
    BACKGROUND,
    IGNORE,
    generate_anchors,
    hard_negative_mining,
    labels_from_matches,
    match_anchors,
    sample_balanced,
    ssd_default_boxes,
)
from coursekit.boxes import decode_boxes, encode_boxes


def _torchvision_anchors(generator, feature_sizes, image_size):
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    features = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    return generator(images, features)[0]


ANCHOR_CONFIGS = [
    # Faster R-CNN + FPN, 5 levels, one size and three ratios per level
    (
        [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)],
        (128, 160),
        [(32,), (64,), (128,), (256,), (512,)],
        [(0.5, 1.0, 2.0)] * 5,
    ),
    # RetinaNet-style: three sizes per level, odd sizes (strides from integer division)
    ([(13, 17), (7, 9)], (100, 137), [(32, 40.3, 50.8), (64, 80.6, 101.6)], [(0.5, 1.0, 2.0), (1.0,)]),
    # one level, the original RPN on a stride-16 map
    ([(5, 7)], (80, 112), [(128, 256, 512)], [(0.5, 1.0, 2.0)]),
]


@pytest.mark.parametrize("feature_sizes, image_size, sizes, ratios", ANCHOR_CONFIGS)
def test_generate_anchors_matches_anchor_generator(feature_sizes, image_size, sizes, ratios):
    ours = generate_anchors(feature_sizes, image_size, sizes, ratios)
    ref = _torchvision_anchors(AnchorGenerator(tuple(sizes), tuple(ratios)), feature_sizes, image_size)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert torch.equal(ours, ref)  # same boxes, same order


def test_generate_anchors_shapes_and_errors():
    anchors = generate_anchors([(2, 3)], (32, 48), [(16,)], [(1.0,)])
    # centres at the top-left corners of 16-pixel cells, rows first
    assert anchors[:4].tolist() == [[-8, -8, 8, 8], [8, -8, 24, 8], [24, -8, 40, 8], [-8, 8, 8, 24]]
    with pytest.raises(ValueError, match="one tuple per feature map"):
        generate_anchors([(2, 3), (1, 2)], (32, 48), [(16,)], [(1.0,)] * 2)


SSD_CONFIGS = [
    # SSD300 / VGG16: six maps, steps and scales as in torchvision's ssd300_vgg16
    dict(
        feature_sizes=[(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)],
        image_size=(300, 300),
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    ),
    # SSDlite-style: scales from min/max ratio, no steps, non-square image, no clipping
    dict(
        feature_sizes=[(10, 8), (5, 4), (3, 2)], image_size=(320, 256), aspect_ratios=[[2, 3]] * 3, clip=False
    ),
    dict(feature_sizes=[(4, 4)], image_size=(64, 64), aspect_ratios=[[2]]),
]


@pytest.mark.parametrize("config", SSD_CONFIGS)
def test_ssd_default_boxes_match_default_box_generator(config):
    cfg = dict(config)
    feature_sizes, image_size = cfg.pop("feature_sizes"), cfg.pop("image_size")
    ours = ssd_default_boxes(feature_sizes, image_size, **cfg)
    ref = _torchvision_anchors(DefaultBoxGenerator(**cfg), feature_sizes, image_size)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-4


def _random_boxes(g, n, size=100.0, min_side=1.0):
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + min_side
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize(
    "high, low, allow", [(0.5, 0.4, True), (0.7, 0.3, True), (0.5, 0.4, False), (0.5, 0.5, False)]
)
def test_match_anchors_matches_torchvision_matcher(high, low, allow):
    g = torch.Generator().manual_seed(0)
    anchors = generate_anchors([(8, 8), (4, 4)], (128, 128), [(24, 40), (64,)], [(0.5, 1.0, 2.0)] * 2)
    for n_gt in (1, 3, 12):
        gt = _random_boxes(g, n_gt, 110.0, 8.0)
        ours = match_anchors(anchors, gt, high, low, allow)
        ref = Matcher(high, low, allow)(box_iou(gt, anchors))
        assert torch.equal(ours, ref)
        assert set(ours.unique().tolist()) <= {BACKGROUND, IGNORE, *range(n_gt)}


def test_match_anchors_low_quality_rescues_small_objects_and_ties():
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 40, 40.0]])
    gt = torch.tensor([[2, 2, 6, 6.0]])  # IoU 0.16 with anchor 0, 0.01 with anchor 2: below both thresholds
    assert match_anchors(anchors, gt, allow_low_quality=False).tolist() == [-1, -1, -1]
    assert match_anchors(anchors, gt).tolist() == [0, -1, -1]
    # a ground truth straddling two anchors equally: both (tied) anchors are matched
    gt = torch.tensor([[5, 0, 15, 10.0]])
    assert match_anchors(anchors, gt).tolist() == [0, 0, -1]


def test_match_anchors_empty_and_errors():
    anchors = torch.tensor([[0, 0, 10, 10.0]])
    assert match_anchors(anchors, torch.zeros(0, 4)).tolist() == [BACKGROUND]
    assert match_anchors(torch.zeros(0, 4), anchors).shape == (0,)
    with pytest.raises(ValueError, match="low"):
        match_anchors(anchors, anchors, high=0.3, low=0.5)
    assert labels_from_matches(torch.tensor([3, 0, -1, -2])).tolist() == [1, 1, 0, -1]


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_box_coder(weights):
    g = torch.Generator().manual_seed(1)
    anchors, gt = _random_boxes(g, 50), _random_boxes(g, 50)
    coder = BoxCoder(weights)
    deltas = encode_boxes(gt, anchors, weights)
    assert torch.allclose(deltas, coder.encode_single(gt, anchors), atol=1e-5)
    assert torch.allclose(decode_boxes(deltas, anchors, weights), gt, atol=1e-3)
    wild = torch.randn(50, 4, generator=g) * 3
    assert torch.allclose(decode_boxes(wild, anchors, weights), coder.decode_single(wild, anchors), atol=1e-3)


def _torchvision_ssd_classification_loss(cls_logits, labels, ratio):
    """torchvision's SSD.compute_loss, called on a stand-in `self` (it only needs box_coder and the ratio)."""
    N, A, _ = cls_logits.shape
    fake_self = SimpleNamespace(box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=ratio)
    # the classification loss sees the labels only through the matches: positive anchor j -> gt j
    targets = []
    for lab in labels:
        pos = lab[lab > 0]
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(max(len(pos), 1), 1)
        targets.append({"boxes": boxes, "labels": pos if len(pos) else torch.ones(1, dtype=torch.long)})
    matched = []
    for lab in labels:
        m = torch.full((A,), -1)
        m[lab > 0] = torch.arange(int((lab > 0).sum()))
        matched.append(m)
    head = {"cls_logits": cls_logits, "bbox_regression": torch.zeros(N, A, 4)}
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(A, 1)] * N
    return SSD.compute_loss(fake_self, targets, head, anchors, matched)["classification"]


@pytest.mark.parametrize("ratio", [3, 1])
def test_hard_negative_mining_matches_torchvision_ssd(ratio):
    g = torch.Generator().manual_seed(2)
    N, A, C = 3, 200, 5
    cls_logits = torch.randn(N, A, C, generator=g)
    labels = torch.zeros(N, A, dtype=torch.long)
    for i, n_pos in enumerate((4, 0, 17)):  # an image without objects keeps no negatives at all
        labels[i, torch.randperm(A, generator=g)[:n_pos]] = torch.randint(1, C, (n_pos,), generator=g)
    loss = F.cross_entropy(cls_logits.reshape(-1, C), labels.reshape(-1), reduction="none").view(N, A)
    keep = hard_negative_mining(loss, labels, ratio)
    ours = loss[keep].sum() / max(1, int((labels > 0).sum()))
    assert torch.allclose(ours, _torchvision_ssd_classification_loss(cls_logits, labels, ratio))
    assert keep.sum(dim=1).tolist() == [(1 + ratio) * 4, 0, (1 + ratio) * 17]
    # the kept negatives are the hardest ones
    neg_kept = loss[0][keep[0] & (labels[0] == 0)]
    assert neg_kept.min() >= loss[0][~keep[0] & (labels[0] == 0)].max()


def test_hard_negative_mining_few_negatives_and_ignored():
    loss = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3])
    labels = torch.tensor([1, 0, 2, -1, 0])
    # 2 positives want 6 negatives; only 2 exist; the ignored anchor is never picked
    assert hard_negative_mining(loss, labels).tolist() == [True, True, True, False, True]
    assert hard_negative_mining(loss, labels, neg_pos_ratio=0).tolist() == [True, False, True, False, False]
    with pytest.raises(ValueError, match="same shape"):
        hard_negative_mining(loss, labels[:3])


@pytest.mark.parametrize(
    "n_pos, n_neg, batch, fraction",
    [(5, 1000, 256, 0.5), (300, 1000, 256, 0.5), (40, 30, 512, 0.25), (0, 0, 64, 0.5)],
)
def test_sample_balanced_counts_match_torchvision(n_pos, n_neg, batch, fraction):
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.ones(n_pos), torch.zeros(n_neg), -torch.ones(20)]).long()
    labels = labels[torch.randperm(len(labels), generator=g)]
    pos, neg = sample_balanced(labels, batch, fraction, generator=g)
    ref_pos, ref_neg = BalancedPositiveNegativeSampler(batch, fraction)([labels])
    assert int(pos.sum()) == int(ref_pos[0].sum()) and int(neg.sum()) == int(ref_neg[0].sum())
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all() and not (pos & neg).any()


def test_sample_balanced_is_reproducible_uniform_and_batched():
    labels = torch.tensor([1] * 10 + [0] * 30)
    draw = lambda seed: sample_balanced(labels, 8, 0.25, torch.Generator().manual_seed(seed))  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(draw(7), draw(7), strict=True))
    # each positive is picked with probability 2/10, each negative 6/30: check the frequencies
    g = torch.Generator().manual_seed(4)
    picks = torch.stack([torch.cat(sample_balanced(labels, 8, 0.25, g)).float() for _ in range(2000)])
    pos_freq, neg_freq = picks[:, :40].mean(0)[:10], picks[:, 40:].mean(0)[10:]
    assert (pos_freq - 0.2).abs().max() < 0.04 and (neg_freq - 0.2).abs().max() < 0.04
    rows = torch.stack([labels, labels.flip(0)])
    pos, neg = sample_balanced(rows, 8, 0.25, g)
    assert pos.sum(1).tolist() == [2, 2] and neg.sum(1).tolist() == [6, 6]



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_balanced_on_cuda_with_a_cpu_generator_picks_what_the_cpu_picks():
    # On CUDA, torch.rand refuses a CPU generator: the keys are drawn where the generator is, then moved.
    labels = torch.tensor([1] * 10 + [0] * 30)
    on_cpu = sample_balanced(labels, 8, 0.25, torch.Generator().manual_seed(7))
    on_gpu = sample_balanced(labels.cuda(), 8, 0.25, torch.Generator().manual_seed(7))
    assert all(g.device.type == "cuda" and torch.equal(g.cpu(), c) for c, g in zip(on_cpu, on_gpu))
