"""coursekit.proposals: Selective Search from scratch, and recall of a proposer."""

import numpy as np
import pytest
import torch
import torchvision

from coursekit import proposals as P


def _scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain grey 96x96 image with three well separated objects of distinct colours, and their boxes."""
    rng = np.random.default_rng(seed)
    image = np.full((96, 96, 3), 0.5) + rng.normal(0, 0.01, (96, 96, 3))
    boxes = [(8, 10, 30, 40), (50, 6, 88, 30), (20, 60, 70, 90)]  # x1, y1, x2, y2
    colours = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.1, 0.2, 0.9)]
    yy, xx = np.mgrid[:96, :96]
    for (x1, y1, x2, y2), colour in zip(boxes[:2], colours[:2], strict=True):
        image[y1:y2, x1:x2] = colour
    # an ellipse: its box is not simply a filled rectangle
    x1, y1, x2, y2 = boxes[2]
    u = (xx + 0.5 - (x1 + x2) / 2) / ((x2 - x1) / 2)
    v = (yy + 0.5 - (y1 + y2) / 2) / ((y2 - y1) / 2)
    inside = u**2 + v**2 <= 1
    image[inside] = colours[2]
    tensor = torch.from_numpy(np.clip(image, 0, 1)).permute(2, 0, 1).float()
    return tensor, torch.tensor(boxes, dtype=torch.float32)


def test_boxes_are_xyxy_inside_the_image_and_capped():
    image, _ = _scene()
    boxes = P.selective_search(image, "fast", max_proposals=50)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4 and 0 < len(boxes) <= 50
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 96).all()
    assert len(torch.unique(boxes, dim=0)) == len(boxes)  # duplicates removed


def test_deterministic_and_seed_only_reorders():
    image, _ = _scene()
    a = P.selective_search(image, "fast", max_proposals=None, seed=0)
    b = P.selective_search(image, "fast", max_proposals=None, seed=0)
    c = P.selective_search(image, "fast", max_proposals=None, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the random jitter of the ranking ...
    assert torch.equal(a[a[:, 0].argsort(stable=True)].unique(dim=0), c.unique(dim=0))  # ... of the same boxes


def test_recall_is_high_on_well_separated_objects():
    image, gt = _scene()
    boxes = P.selective_search(image, "single")
    recall = P.proposal_recall([boxes], [gt], (0.5, 0.7))
    assert recall[0.5] == 1.0 and recall[0.7] == 1.0
    assert P.best_overlaps([boxes], [gt]).min() > 0.9


def test_region_features_match_torchvision_masks_to_boxes():
    image, _ = _scene()
    rgb = image.permute(1, 2, 0).double().numpy()
    labels = P.felzenszwalb_regions(rgb, scale=50)
    R = int(labels.max()) + 1
    assert set(np.unique(labels)) == set(range(R))  # contiguous labels
    sizes, boxes, hist = P._region_features(rgb, labels, R)
    masks = torch.from_numpy(labels)[None] == torch.arange(R)[:, None, None]
    expected = torchvision.ops.masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # x2 = last col + 1
    assert np.array_equal(boxes, expected.double().numpy())
    assert np.array_equal(sizes, masks.sum((1, 2)).double().numpy())
    assert np.allclose(hist.sum(1), 1.0)


def test_hierarchy_merges_adjacent_regions_up_to_the_whole_image():
    image, _ = _scene()
    rgb = image.permute(1, 2, 0).double().numpy()
    labels = P.felzenszwalb_regions(rgb, scale=50)
    R = int(labels.max()) + 1
    h = P.hierarchical_grouping(rgb, labels)
    assert h.merges.shape == (R - 1, 2) and h.boxes.shape == (2 * R - 1, 4)
    assert np.array_equal(h.boxes[-1], [0, 0, 96, 96]) and h.sizes[-1] == 96 * 96
    for t, (i, j) in enumerate(h.merges):  # each new box is the union of its two parts' boxes
        assert i < R + t and j < R + t
        union = np.r_[np.minimum(h.boxes[i, :2], h.boxes[j, :2]), np.maximum(h.boxes[i, 2:], h.boxes[j, 2:])]
        assert np.array_equal(h.boxes[R + t], union)
    assert np.array_equal(P.regions_after(labels, h, 0), labels)
    assert len(np.unique(P.regions_after(labels, h, R - 1))) == 1
    middle = P.regions_after(labels, h, R // 2)
    assert len(np.unique(middle)) == R - R // 2


def test_colour_similarity_merges_same_colour_first():
    # four vertical stripes: red | red' | blue | red; the two near-identical reds touch and merge first
    image = np.zeros((20, 40, 3))
    image[:, :10] = (0.9, 0.1, 0.1)
    image[:, 10:20] = (0.91, 0.1, 0.1)
    image[:, 20:30] = (0.1, 0.1, 0.9)
    image[:, 30:] = (0.9, 0.1, 0.1)
    labels = np.repeat(np.arange(4), 10)[None].repeat(20, 0)
    h = P.hierarchical_grouping(image, labels, ("colour",))
    assert sorted(h.merges[0].tolist()) == [0, 1]


def test_recall_against_a_brute_force_count():
    gen = torch.Generator().manual_seed(0)
    gts, props = [], []
    for _ in range(3):
        xy = torch.rand(4, 2, generator=gen) * 50
        gts.append(torch.cat([xy, xy + 10 + torch.rand(4, 2, generator=gen) * 30], 1))
        xy = torch.rand(30, 2, generator=gen) * 60
        props.append(torch.cat([xy, xy + 5 + torch.rand(30, 2, generator=gen) * 40], 1))
    for k in (None, 5):
        hits = {0.5: 0, 0.7: 0}
        for g, p in zip(gts, props, strict=True):
            p = p if k is None else p[:k]
            for box in g:
                best = max(float(torchvision.ops.box_iou(box[None], q[None])) for q in p)
                hits[0.5] += best >= 0.5
                hits[0.7] += best >= 0.7
        recall = P.proposal_recall(props, gts, (0.5, 0.7), max_proposals=k)
        assert recall == pytest.approx({t: n / 12 for t, n in hits.items()})


def test_bad_inputs_raise_value_error():
    image, gt = _scene()
    with pytest.raises(ValueError, match="mode"):
        P.selective_search(image, "slow")
    with pytest.raises(ValueError, match="Tensor\\[3, H, W\\]"):
        P.selective_search(image[0])
    with pytest.raises(ValueError, match="similarity"):
        P.hierarchical_grouping(np.zeros((4, 4, 3)), np.zeros((4, 4), int), ("texture",))
    with pytest.raises(ValueError, match="colour_space"):
        P.selective_search(image, [P.Strategy("xyz")])
    with pytest.raises(ValueError, match="one proposal tensor per image"):
        P.proposal_recall([gt], [gt, gt])
    with pytest.raises(ValueError, match="no ground-truth"):
        P.proposal_recall([gt], [torch.zeros(0, 4)])
