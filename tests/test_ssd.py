"""SSD (coursekit.models.ssd): matching / encoding round trip, hard negative mining, the loss and the
decoding against torchvision's SSD, a tiny overfit, the network and the FPN."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD as TorchvisionSSD

from coursekit.anchors import hard_negative_mining
from coursekit.boxes import decode_boxes
from coursekit.detection import SSD_BOX_WEIGHTS, ssd_decode, ssd_loss, ssd_step, ssd_targets
from coursekit.models.ssd import FPN, SSD, SSDConfig

IMAGE, C = 64, 3


def _model(**kw) -> SSD:
    return SSD(C, image_size=IMAGE, widths=(8, 8, 16, 16, 16), **kw)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 30.0], [30.0, 30.0, 60.0, 58.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[10.0, 10.0, 18.0, 18.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no object at all
    ]


def _tv(**kw) -> SimpleNamespace:
    """Just enough of a torchvision SSD to call its unbound compute_loss / postprocess_detections."""
    return SimpleNamespace(box_coder=det_utils.BoxCoder(weights=SSD_BOX_WEIGHTS), neg_to_pos_ratio=3, **kw)


def test_matching_and_encoding_round_trip():
    anchors = _model().anchors
    labels, box_targets = ssd_targets(anchors, _targets())
    assert labels.shape == (3, len(anchors)) and box_targets.shape == (3, len(anchors), 4)
    for t, lab, deltas in zip(_targets(), labels, box_targets, strict=True):
        positive = lab > 0
        assert int(positive.sum()) >= len(t["boxes"])  # every object has at least its best anchor
        decoded = decode_boxes(deltas[positive], anchors[positive], SSD_BOX_WEIGHTS)
        iou = torchvision.ops.box_iou(decoded, t["boxes"]) if len(t["boxes"]) else torch.zeros(0, 0)
        # each positive decodes exactly onto one ground-truth box, of the class it is labelled with
        if len(t["boxes"]):
            best = iou.argmax(dim=1)
            torch.testing.assert_close(decoded, t["boxes"][best], atol=1e-4, rtol=0)
            assert lab[positive].tolist() == t["labels"][best].tolist()
    assert (labels[2] == 0).all()


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    model = _model()
    cls_logits = torch.randn(3, len(model.anchors), C + 1, generator=torch.Generator().manual_seed(0))
    labels, _ = ssd_targets(model.anchors, _targets())
    ce = torch.nn.functional.cross_entropy(cls_logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    keep = hard_negative_mining(ce, labels)
    for n in range(3):
        pos, neg = labels[n] > 0, keep[n] & (labels[n] == 0)
        assert int(neg.sum()) == 3 * int(pos.sum())
        if neg.any():  # the kept negatives are the hardest ones
            assert ce[n][neg].min() >= ce[n][(labels[n] == 0) & ~neg].max()


def test_loss_equals_torchvision_compute_loss():
    model = _model()
    g = torch.Generator().manual_seed(1)
    A = len(model.anchors)
    cls_logits, deltas = torch.randn(3, A, C + 1, generator=g), torch.randn(3, A, 4, generator=g)
    ours = ssd_loss(cls_logits, deltas, model.anchors, _targets())
    matcher = det_utils.SSDMatcher(0.5)
    matched = [
        matcher(torchvision.ops.box_iou(t["boxes"], model.anchors)) if len(t["boxes"])
        else torch.full((A,), -1, dtype=torch.int64)
        for t in _targets()
    ]
    ref = TorchvisionSSD.compute_loss(
        _tv(), _targets(), {"cls_logits": cls_logits, "bbox_regression": deltas}, [model.anchors] * 3, matched
    )
    torch.testing.assert_close(ours["loss_box"], ref["bbox_regression"])
    torch.testing.assert_close(ours["loss_cls"], ref["classification"])
    torch.testing.assert_close(ours["loss"], ref["bbox_regression"] + ref["classification"])


def test_decode_equals_torchvision_postprocess():
    model = _model()
    g = torch.Generator().manual_seed(2)
    A = len(model.anchors)
    cls_logits, deltas = torch.randn(2, A, C + 1, generator=g) * 3, torch.randn(2, A, 4, generator=g)
    ours = ssd_decode(cls_logits, deltas, model.anchors, IMAGE, score_threshold=0.2, iou_threshold=0.45,
                  topk_candidates=50, max_detections=30)  # fmt: skip
    tv = _tv(score_thresh=0.2, topk_candidates=50, nms_thresh=0.45, detections_per_img=30)
    ref = TorchvisionSSD.postprocess_detections(
        tv, {"cls_logits": cls_logits, "bbox_regression": deltas}, [model.anchors] * 2, [(IMAGE, IMAGE)] * 2
    )
    for o, r in zip(ours, ref, strict=True):
        assert len(o["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(o[key], r[key])
        boxes, scores = o["boxes"], o["scores"]
        assert (boxes >= 0).all() and (boxes <= IMAGE).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert (scores[:-1] >= scores[1:]).all()
        same = o["labels"][:, None] == o["labels"][None, :]
        assert not (torchvision.ops.box_iou(boxes, boxes).triu(1)[same.triu(1)] > 0.45).any()


def test_tiny_overfit_loss_is_finite_and_decreasing():
    torch.manual_seed(0)
    model = _model()
    images = torch.rand(3, 3, IMAGE, IMAGE)
    for t, image in zip(_targets(), images, strict=True):  # paint the objects so there is something to see
        for x1, y1, x2, y2 in t["boxes"].int().tolist():
            image[:, y1:y2, x1:x2] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = ssd_step(model, (images, _targets()), torch.device("cpu"))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_network_shapes_anchors_and_fpn():
    for fpn in (False, True):
        model = _model(fpn=fpn)
        # strides 8, 16, 32 on 64 px: 8x8 + 4x4 + 2x2 cells, 4 boxes each (ratio 2)
        assert len(model.anchors) == (64 + 16 + 4) * 4
        cls_logits, deltas = model(torch.rand(2, 3, IMAGE, IMAGE))
        assert cls_logits.shape == (2, len(model.anchors), C + 1) and deltas.shape == (2, len(model.anchors), 4)
    coarse = _model(strides=(16, 32))
    assert len(coarse.anchors) == (16 + 4) * 4
    smallest = lambda anchors: (anchors[:, 2:] - anchors[:, :2]).min()  # noqa: E731
    assert smallest(coarse.anchors) > smallest(_model().anchors)  # no high-resolution level: no small anchors
    with pytest.raises(ValueError, match="strides"):
        _model(strides=(8, 12))
    with pytest.raises(ValueError, match="built for 64x64"):
        _model()(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="cls_logits"):
        ssd_loss(torch.zeros(2, 5, C + 1), torch.zeros(2, 4, 4), torch.zeros(5, 4), _targets()[:2])


def test_fpn_passes_coarse_information_to_fine_levels():
    torch.manual_seed(0)
    fpn = FPN([8, 16], channels=4).eval()
    fine, coarse = torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)
    out = fpn([fine, coarse])
    assert [o.shape for o in out] == [(1, 4, 8, 8), (1, 4, 4, 4)]
    changed = fpn([fine, coarse + 1.0])[0]
    assert not torch.allclose(changed, out[0])  # the fine level depends on the coarse one


def test_ssd_from_config_builds_the_same_network_as_the_keywords():
    config = SSDConfig(image_size=IMAGE, strides=(16, 32), widths=(8, 8, 16, 16, 16), fpn=True, fpn_channels=8)
    torch.manual_seed(0)
    built = SSD.from_config(C, config)
    torch.manual_seed(0)
    direct = _model(strides=(16, 32), fpn=True, fpn_channels=8)
    assert torch.equal(built.anchors, direct.anchors) and built.strides == (16, 32)
    pairs = zip(built.state_dict().values(), direct.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert SSD.from_config(C).image_size == SSDConfig().image_size  # None: the defaults
    with pytest.raises(ValueError, match="strides"):
        SSD.from_config(C, SSDConfig(image_size=IMAGE, strides=(32, 16)))
