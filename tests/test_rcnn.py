"""coursekit.models.rcnn: heads, target assignment, losses and post-processing against torchvision."""

import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from coursekit.detection import proposals_step
from coursekit.models import rcnn as R
from coursekit.models.torchvision_detection import torchvision_faster_rcnn


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return R.ResNet18Trunk("layer2", pretrained=False)


def _targets(gen, n_images=2, size=64):
    targets = []
    for i in range(n_images):
        xy = torch.rand(i + 2, 2, generator=gen) * size * 0.6
        wh = 8 + torch.rand(i + 2, 2, generator=gen) * size * 0.3
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 4, (i + 2,), generator=gen)})
    return targets


def _proposals(gen, targets, n=20):
    out = []
    for t in targets:
        jitter = t["boxes"].repeat(3, 1) + torch.randn(3 * len(t["boxes"]), 4, generator=gen) * 3
        xy = torch.rand(n, 2, generator=gen) * 40
        rand = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=gen) * 20], 1)
        boxes = torch.cat([jitter, rand])
        out.append(torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1))
    return out


# ------------------------------------------------------------------------------------------ shapes
def test_box_head_shapes():
    head = R.BoxHead(in_channels=16, num_classes=5, pool_size=7, hidden=32)
    logits, deltas = head(torch.randn(11, 16, 7, 7))
    assert logits.shape == (11, 5) and deltas.shape == (11, 20)
    with pytest.raises(ValueError, match="background"):
        R.BoxHead(16, 1)


def test_rcnn_warps_pixels_and_fast_rcnn_pools_features(trunk):
    images = torch.rand(2, 3, 64, 64)
    rois = [torch.tensor([[0.0, 0, 32, 32], [8, 8, 60, 40], [1, 2, 9, 20]]), torch.tensor([[4.0, 4, 50, 60]])]
    rcnn, fast = R.RCNN(trunk, 4), R.FastRCNN(trunk, 4)
    assert rcnn.warp_size == 56  # 7 cells of stride 8
    with torch.no_grad():
        a = rcnn.region_features(rcnn.image_features(images), rois)
        b = fast.region_features(fast.image_features(images), rois)
    assert a.shape == b.shape == (4, 128, 7, 7)
    assert rcnn.backbone_passes == 4 and fast.backbone_passes == 2  # one pass per crop vs one per image
    crops = R.warp_regions(images, rois, 16)
    assert crops.shape == (4, 3, 16, 16)
    for size in (40, 64, 96):  # the whole image as a box: a plain bilinear resize
        whole = R.warp_regions(images, [torch.tensor([[0.0, 0, 64, 64]])] * 2, size)
        assert torch.allclose(whole, F.interpolate(images, size=size, mode="bilinear"), atol=1e-5)


def test_detectors_return_losses_in_train_and_detections_in_eval(trunk):
    gen = torch.Generator().manual_seed(0)
    targets = _targets(gen)
    images = [torch.rand(3, 64, 64) for _ in targets]
    props = _proposals(gen, targets)
    for model in (R.RCNN(trunk, 4), R.FastRCNN(trunk, 4), R.FastRCNN(trunk, 4, pool="roi_align")):
        model.train()
        losses = model(images, targets, proposals=props)
        assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
        model.eval()
        with torch.no_grad():
            out = model(images, proposals=props)
        assert len(out) == 2 and all(set(o) == {"boxes", "scores", "labels"} for o in out)
        with pytest.raises(ValueError, match="proposals"):
            model(images)
    model = R.TwoStageDetector(trunk, 4).train()
    assert set(model(images, targets)) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    with pytest.raises(ValueError, match="one size"):
        model([torch.rand(3, 64, 64), torch.rand(3, 32, 64)], targets)


# ------------------------------------------------------------------------------ against torchvision
def test_fast_rcnn_loss_matches_torchvision():
    gen = torch.Generator().manual_seed(1)
    logits, deltas = torch.randn(12, 5, generator=gen), torch.randn(12, 20, generator=gen)
    labels = torch.tensor([0, 1, 4, 0, 2, 2, 0, 3, 0, 0, 1, 0])
    targets = torch.randn(12, 4, generator=gen)
    ours = R.fast_rcnn_loss(logits, deltas, labels, targets)
    theirs = tv_roi_heads.fastrcnn_loss(logits, deltas, [labels[:5], labels[5:]], [targets[:5], targets[5:]])
    assert torch.allclose(torch.stack(ours), torch.stack(theirs))


def _tv_rpn(sizes, ratios, channels=8, **kw):
    anchors = AnchorGenerator((tuple(sizes),), (tuple(ratios),))
    head = RPNHead(channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(anchors, head, 0.7, 0.3, 256, 0.5, dict(training=1000, testing=1000),
                                 dict(training=300, testing=300), 0.7, **kw)


def test_rpn_head_and_anchors_flatten_like_torchvision():
    torch.manual_seed(0)
    ours = R.RPN(8, stride=8, sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0))
    tv = _tv_rpn((16, 32), (0.5, 1.0, 2.0))
    tv.head.conv[0][0].load_state_dict(ours.conv.state_dict())
    tv.head.cls_logits.load_state_dict(ours.cls_logits.state_dict())
    tv.head.bbox_pred.load_state_dict(ours.bbox_pred.state_dict())
    features = torch.randn(2, 8, 8, 10)
    logits, deltas = ours.head(features)
    tv_logits, tv_deltas = concat_box_prediction_layers(*tv.head([features]))
    assert torch.allclose(logits.reshape(-1, 1), tv_logits, atol=1e-6)
    assert torch.allclose(deltas.reshape(-1, 4), tv_deltas, atol=1e-6)
    images = ImageList(torch.zeros(2, 3, 64, 80), [(64, 80)] * 2)
    assert torch.equal(ours.anchors((8, 10), (64, 80)), tv.anchor_generator(images, [features])[0])


def test_rpn_targets_match_torchvision_matcher():
    gen = torch.Generator().manual_seed(2)
    rpn = R.RPN(8, stride=8, sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0))
    anchors = rpn.anchors((8, 8), (64, 64))
    targets = _targets(gen, 3) + [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    labels, matched = R.rpn_targets(anchors, [t["boxes"] for t in targets])
    tv_labels, tv_matched = _tv_rpn((16, 32), (0.5, 1, 2)).assign_targets_to_anchors([anchors] * 4, targets)
    assert torch.equal(labels, torch.stack(tv_labels))
    assert (labels == 1).any() and (labels == -1).any() and (labels == 0).any()
    for lab, m, tv_m in zip(labels, matched, tv_matched, strict=True):
        assert torch.equal(m[lab == 1], tv_m[lab == 1])  # only positives regress


def test_rpn_loss_matches_torchvision_given_the_same_sample():
    gen = torch.Generator().manual_seed(3)
    rpn = R.RPN(8, stride=8)
    anchors = rpn.anchors((8, 8), (64, 64))
    targets = _targets(gen, 2)
    labels, matched = R.rpn_targets(anchors, [t["boxes"] for t in targets])
    reg = torch.stack([R.encode_boxes(m, anchors) for m in matched])
    pos, neg = R.sample_balanced(labels, 64, 0.5, generator=gen)
    objectness, deltas = torch.randn(labels.shape, generator=gen), torch.randn(*labels.shape, 4, generator=gen)
    ours = R.rpn_loss(objectness, deltas, labels, reg, pos, neg)
    tv = _tv_rpn((16, 32, 64), (0.5, 1, 2))
    tv.fg_bg_sampler = lambda _: (list(pos), list(neg))  # same sample: only the loss arithmetic is compared
    theirs = tv.compute_loss(objectness.reshape(-1, 1), deltas.reshape(-1, 4), list(labels), list(reg))
    assert torch.allclose(torch.stack(ours), torch.stack(theirs))


def _sorted_rows(t):
    return t[torch.from_numpy(np.lexsort(t.numpy().T[::-1]))]


def test_sample_proposals_matches_torchvision_assignment():
    gen = torch.Generator().manual_seed(4)
    targets = _targets(gen, 2)
    props = _proposals(gen, targets)
    # a batch larger than the proposals and no cap on positives: every region is kept, no randomness
    rois, labels, reg = R.sample_proposals(props, targets, batch_size_per_image=10_000, positive_fraction=1.0)
    heads = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 10_000, 1.0, R.HEAD_BOX_WEIGHTS, 0.05, 0.5, 100)
    tv_rois, _, tv_labels, tv_reg = heads.select_training_samples([p.clone() for p in props], targets)
    assert (labels > 0).any() and (labels == 0).any()
    ours = torch.cat([torch.cat(rois), labels[:, None].float(), reg], 1)  # one row per region, any order
    theirs = torch.cat([torch.cat(tv_rois), torch.cat(tv_labels)[:, None].float(), torch.cat(tv_reg)], 1)
    assert torch.allclose(_sorted_rows(ours), _sorted_rows(theirs), atol=1e-4)
    pos, _, _ = R.sample_proposals(props, targets, batch_size_per_image=8, positive_fraction=0.25)
    assert all(len(r) == 8 for r in pos)


def test_postprocess_matches_torchvision():
    gen = torch.Generator().manual_seed(5)
    targets = _targets(gen, 2)
    props = _proposals(gen, targets)
    K = sum(len(p) for p in props)
    logits, deltas = torch.randn(K, 4, generator=gen) * 3, torch.randn(K, 16, generator=gen) * 0.5
    ours = R.postprocess_detections(logits, deltas, props, (64, 64), 0.05, 0.5, 20)
    heads = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, R.HEAD_BOX_WEIGHTS, 0.05, 0.5, 20)
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, props, [(64, 64)] * 2)
    for o, b, s, lab in zip(ours, boxes, scores, labels, strict=True):
        assert len(o["boxes"]) > 0
        assert torch.allclose(o["boxes"], b, atol=1e-4) and torch.equal(o["labels"], lab)
        assert torch.allclose(o["scores"], s)


# ------------------------------------------------------------------------------------------ training
def test_four_losses_finite_and_decreasing_on_a_tiny_overfit(trunk):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(6)
    targets = _targets(gen, 1)
    image = torch.full((3, 64, 64), 0.2)
    for (x1, y1, x2, y2) in targets[0]["boxes"].round().int().tolist():
        image[:, y1:y2, x1:x2] = 0.9  # bright boxes on a dark image
    model = R.TwoStageDetector(trunk, 4, rpn_kw={"sizes": (16, 32)}).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(25):
        losses = model([image], targets)
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    rpn_first = history[0]["loss_objectness"] + history[0]["loss_rpn_box_reg"]
    rpn_last = sum(h["loss_objectness"] + h["loss_rpn_box_reg"] for h in history[-3:]) / 3
    assert rpn_last < 0.5 * rpn_first, (rpn_first, rpn_last)
    total = [sum(h.values()) for h in history]
    assert sum(total[-3:]) / 3 < 0.5 * total[0]


def test_proposals_step_trains_with_the_trainer(trunk):
    from coursekit.train import Trainer

    gen = torch.Generator().manual_seed(7)
    targets = _targets(gen, 2)
    batch = ([torch.rand(3, 64, 64) for _ in targets], _proposals(gen, targets), targets)
    model = R.FastRCNN(trunk, 4)
    trainer = Trainer(model, torch.optim.SGD(model.head.parameters(), lr=0.01), proposals_step, device="cpu")
    history = trainer.fit([batch], epochs=1, progress=False)
    assert {"loss", "loss_classifier", "loss_box_reg"} <= set(history.keys())


# ------------------------------------------------------------------------------------ torchvision model
def test_torchvision_builder_works_offline_without_download(monkeypatch, capsys):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    loaded = []
    stub = lambda body, verbose=True: loaded.append(body) or "x"  # noqa: E731
    monkeypatch.setattr("coursekit.weights.load_backbone_weights", stub)
    model, weights = torchvision_faster_rcnn(4, backbone="resnet50-coco", min_size=64, max_size=64)
    assert "using a ResNet-18 FPN instead" in capsys.readouterr().out
    assert weights == "x" and len(loaded) == 1 and hasattr(loaded[0], "layer4")
    assert model.transform.min_size == (64,) and model.transform.max_size == 64
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    with pytest.raises(ValueError, match="backbone"):
        torchvision_faster_rcnn(4, backbone="vgg16")
