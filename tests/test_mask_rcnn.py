"""Mask R-CNN: the offline builder and the RoI pooler swap (coursekit.models.mask_rcnn); output conversion,
evaluation and the crop-and-paste experiment (coursekit.instance_segmentation)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign

from coursekit import instance_segmentation as inst
from coursekit.data import Shapes, collate
from coursekit.metrics import mask_iou, mean_average_precision
from coursekit.models import mask_rcnn as M
from coursekit.models.torchvision_detection import SMALL_IMAGE_SETTINGS, torchvision_mask_rcnn

LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def _small_model(num_classes: int = 4, size: int = 64, **kw) -> torchvision.models.detection.MaskRCNN:
    torch.manual_seed(0)
    model, _ = torchvision_mask_rcnn(num_classes, pretrained=False, min_size=size, max_size=size,
                                     fpn_channels=32, box_hidden=64, mask_channels=32, **kw)
    return model


def _forbid_downloads(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)


# ------------------------------------------------------------------------------------------- builder
def test_builder_offline_falls_back_to_resnet18_with_one_line_and_no_download(monkeypatch, capsys):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    monkeypatch.setattr("coursekit.weights.is_cached", lambda weights: False)  # no COCO file on this disk
    _forbid_downloads(monkeypatch)
    loaded = []
    monkeypatch.setattr("coursekit.weights.load_backbone_weights",
                        lambda body, verbose=True: loaded.append(body) or "coursekit-shapes")
    model, weights = torchvision_mask_rcnn(7, backbone="resnet50-coco", min_size=96, max_size=96, trainable_layers=3)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == ["coursekit: COCO Mask R-CNN weights unavailable (offline): using a ResNet-18 FPN instead"]
    assert weights == "coursekit-shapes" and not hasattr(model, "weights_source")
    assert len(loaded) == 1 and isinstance(loaded[0], torchvision.models.ResNet)
    assert model.transform.min_size == (96,) and model.transform.max_size == 96
    assert model.roi_heads.box_predictor.cls_score.out_features == 7
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 7
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.layer1.parameters())  # 3 trainable stages: layer2..4
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    assert model.rpn._post_nms_top_n["testing"] == SMALL_IMAGE_SETTINGS["rpn_post_nms_top_n_test"]


def test_builder_random_weights_load_nothing(monkeypatch):
    _forbid_downloads(monkeypatch)
    monkeypatch.setattr("coursekit.weights.load_backbone_weights", lambda *a, **k: pytest.fail("loaded weights"))
    _, weights = torchvision_mask_rcnn(4, pretrained=False, min_size=64, max_size=64)
    assert weights == "random"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"backbone": "vgg16"}, "backbone"), ({"num_classes": 1}, "num_classes"),
     ({"trainable_layers": 6}, "trainable_layers"), ({"anchor_sizes": (8, 16)}, "anchor_sizes"),
     ({"min_size": 128, "max_size": 64}, "min_size")],
)
def test_builder_rejects_bad_arguments(kwargs, match):
    kwargs = {"num_classes": 4, "pretrained": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        torchvision_mask_rcnn(kwargs.pop("num_classes"), **kwargs)


def test_output_format_for_a_batch():
    data = Shapes(2, image_size=64, min_objects=2, max_objects=3, classes=("circle", "square", "star"), seed=0)
    images, targets = collate([data[0], data[1]])
    model = _small_model(data.num_classes)
    losses = model(list(images), targets)
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        outputs = model(list(images))
    assert len(outputs) == 2
    for out in outputs:
        n = len(out["boxes"])
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,) and out["scores"].shape == (n,)
        assert out["masks"].shape == (n, 1, 64, 64) and out["masks"].dtype == torch.float32
        assert n == 0 or (0 <= out["masks"].min() and out["masks"].max() <= 1)


# ------------------------------------------------------------------------------- metrics format
def test_to_metrics_format_thresholds_at_half_and_returns_uint8():
    probs = torch.tensor([0.2, 0.5, 0.50001, 0.9]).view(1, 1, 2, 2)
    outputs = [{"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([3]),
                "scores": torch.tensor([0.8]), "masks": probs.clone()}]
    (pred,) = inst.to_metrics_format(outputs)
    assert pred["masks"].dtype == torch.uint8 and pred["masks"].shape == (1, 2, 2)
    assert pred["masks"].flatten().tolist() == [0, 0, 1, 1]  # strictly above 0.5, as torchvision's COCO eval
    assert pred["labels"].dtype == torch.int64 and pred["scores"].dtype == torch.float32
    assert torch.equal(outputs[0]["masks"], probs)  # input untouched
    (high,) = inst.to_metrics_format(outputs, mask_threshold=0.8)
    assert high["masks"].flatten().tolist() == [0, 0, 0, 1]


def test_to_metrics_format_feeds_mask_ap():
    """Soft masks that are right after thresholding give mask AP 1; the same masks at p = 0.5 give nothing."""
    data = Shapes(3, image_size=48, min_objects=1, max_objects=3, seed=3)
    targets = [data[i][1] for i in range(3)]

    def outputs(p):
        return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.linspace(0.9, 0.5, len(t["labels"])),
                 "masks": t["masks"][:, None].float() * p} for t in targets]

    assert mean_average_precision(inst.to_metrics_format(outputs(0.7)), targets, iou_type="segm")["map"] == 1.0
    empty = inst.to_metrics_format(outputs(0.5))
    assert all(int(p["masks"].sum()) == 0 for p in empty)
    assert mean_average_precision(empty, targets, iou_type="segm")["map"] == 0.0


def test_to_metrics_format_rejects_bad_input():
    good = {"boxes": torch.zeros(1, 4), "labels": torch.ones(1, dtype=torch.long), "scores": torch.ones(1),
            "masks": torch.zeros(1, 1, 4, 4)}
    with pytest.raises(ValueError, match="masks"):
        inst.to_metrics_format([{k: v for k, v in good.items() if k != "masks"}])
    with pytest.raises(ValueError, match="mask_threshold"):
        inst.to_metrics_format([good], mask_threshold=1.0)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        inst.to_metrics_format([{**good, "masks": torch.zeros(1, 2, 4, 4)}])


class _Replay(torch.nn.Module):
    """A stand-in detector that returns prepared outputs in order (tests evaluate's plumbing)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, images):
        done, self.outputs = self.outputs[: len(images)], self.outputs[len(images):]
        return done


def test_evaluate_reports_box_and_mask_ap():
    data = Shapes(5, image_size=48, min_objects=1, max_objects=3, seed=4)
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
                "masks": t["masks"][:, None].float()} for _, t in (data[i] for i in range(5))]
    result = inst.evaluate(_Replay(perfect), data, device="cpu", batch_size=2)
    assert result["box_map"] == 1.0 and result["mask_map"] == 1.0 and result["mask_map_50"] == 1.0
    # boxes still right, masks shifted by 3 px: mask AP drops, box AP does not
    shifted = [{**o, "masks": o["masks"].roll(3, dims=-1)} for o in perfect]
    result = inst.evaluate(_Replay(shifted), data, device="cpu", batch_size=2)
    assert result["box_map"] == 1.0 and result["mask_map"] < 0.9
    with pytest.raises(ValueError, match="dataset"):
        inst.evaluate(_Replay(perfect), [data[0][0]], device="cpu")


# ------------------------------------------------------------------------------------------ training
def test_a_few_steps_on_a_tiny_batch_give_finite_decreasing_losses():
    from coursekit.train import Trainer, detection_step

    data = Shapes(2, image_size=64, min_objects=2, max_objects=2, classes=("circle", "square"), seed=1)
    batch = collate([data[0], data[1]])
    model = _small_model(data.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    trainer = Trainer(model, torch.optim.Adam(params, lr=1e-3), detection_step, device="cpu")
    logs = [trainer.train_step(batch) for _ in range(12)]
    assert all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in logs)
    total = [row["loss"] for row in logs]
    assert sum(total[-3:]) / 3 < 0.7 * sum(total[:3]) / 3, total
    assert logs[-1]["loss_mask"] < logs[0]["loss_mask"], [row["loss_mask"] for row in logs]


# ------------------------------------------------------------------------------------- RoI poolers
def _pyramid(seed: int = 0, image: int = 512, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    features = {str(i): torch.randn(2, channels, image // 4 >> i, image // 4 >> i, generator=g) for i in range(4)}
    features["pool"] = torch.randn(2, channels, image // 64, image // 64, generator=g)  # not pooled from
    boxes = []
    sides = torch.tensor([7.0, 30, 90, 130, 250, 300, 500, 505, 12, 60, 230, 510])  # P2, P3, P4, P5 sizes
    for side in sides.split([7, 5]):
        wh = side[:, None] * torch.empty(len(side), 2).uniform_(0.9, 1.0, generator=g)
        xy = torch.rand(len(side), 2, generator=g) * (image - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))
    return features, boxes, [(image, image), (image - 40, image)]


@pytest.mark.parametrize("output_size", [7, 14])
def test_pooler_with_align_equals_torchvision_multiscale_roi_align(output_size):
    features, boxes, shapes = _pyramid()
    names = ["0", "1", "2", "3"]
    ours = M.MultiScaleRoIPooler(names, output_size, sampling_ratio=2, op="align")(features, boxes, shapes)
    ref = MultiScaleRoIAlign(names, output_size, sampling_ratio=2)(features, boxes, shapes)
    assert ours.shape == (12, 3, output_size, output_size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    levels = M.MultiScaleRoIPooler(names, output_size)._levels(boxes, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    assert set(levels.tolist()) == {0, 1, 2, 3}  # the test really spans the pyramid


def test_pooler_with_pool_uses_roi_pool_on_the_level_of_each_box():
    features, boxes, shapes = _pyramid(seed=1)
    pooler = M.MultiScaleRoIPooler(["0", "1", "2", "3"], 7, op="pool")
    ours = pooler(features, boxes, shapes)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    levels = pooler._levels(boxes, scales)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    for k, (roi, level) in enumerate(zip(rois, levels.tolist(), strict=True)):
        expected = torchvision.ops.roi_pool(features[str(level)], roi[None], 7, scales[level])
        torch.testing.assert_close(ours[k : k + 1], expected, rtol=0, atol=0)
    align = M.MultiScaleRoIPooler(["0", "1", "2", "3"], 7, op="align")(features, boxes, shapes)
    assert not torch.allclose(ours, align)
    with pytest.raises(ValueError, match="op"):
        M.MultiScaleRoIPooler(["0"], 7, op="max")


def test_swap_roi_poolers_changes_the_poolers_of_a_copy_and_still_runs():
    data = Shapes(2, image_size=64, min_objects=2, max_objects=3, classes=("circle", "square", "star"), seed=2)
    images, targets = collate([data[0], data[1]])
    model = _small_model(data.num_classes)
    swapped = M.swap_roi_poolers(model, "pool")
    for name, size in (("box_roi_pool", 7), ("mask_roi_pool", 14)):
        new = getattr(swapped.roi_heads, name)
        assert isinstance(new, M.MultiScaleRoIPooler) and new.op == "pool" and new.output_size == (size, size)
        assert isinstance(getattr(model.roi_heads, name), MultiScaleRoIAlign)  # the original is untouched
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), swapped.state_dict().values()))
    model.eval(), swapped.eval()
    with torch.no_grad():
        # the same proposals through both poolers: only the RoI op differs, and it changes the head's scores
        feats = model.backbone(model.transform(list(images))[0].tensors)
        proposals = [t["boxes"] for t in targets]
        shapes = [(64, 64)] * 2
        a = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, proposals, shapes))
        b = swapped.roi_heads.box_head(swapped.roi_heads.box_roi_pool(feats, proposals, shapes))
        assert not torch.allclose(a, b)
        outputs = swapped(list(images))
    assert len(outputs) == 2 and all(o["masks"].shape[1:] == (1, 64, 64) for o in outputs)
    swapped.train()
    assert set(swapped(list(images), targets)) == LOSSES  # it trains too
    back = M.swap_roi_poolers(swapped, "align")
    assert back.roi_heads.mask_roi_pool.op == "align"
    with pytest.raises(ValueError, match="MaskRCNN"):
        M.swap_roi_poolers(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------- quantisation, controlled
def test_crop_and_paste_align_keeps_masks_and_pool_loses_more_at_coarse_strides():
    data = Shapes(6, image_size=128, min_objects=2, max_objects=3, min_size=20, seed=5)
    masks = torch.cat([data[i][1]["masks"] for i in range(6)])
    boxes = torch.cat([data[i][1]["boxes"] for i in range(6)])
    iou = {(op, s): mask_iou(inst.crop_and_paste_masks(masks, boxes, op, s), masks).diagonal().mean().item()
           for op in ("align", "pool") for s in (1, 16)}
    assert iou["align", 1] > 0.9  # at full resolution, cut + paste loses little
    assert iou["pool", 16] < iou["align", 16] - 0.05, iou  # rounding to 16 px cells costs a lot more
    out = inst.crop_and_paste_masks(masks, boxes, "pool", 8)
    assert out.shape == masks.shape and out.dtype == torch.uint8
    with pytest.raises(ValueError, match="stride"):
        inst.crop_and_paste_masks(masks, boxes, "align", 5)
    with pytest.raises(ValueError, match="op"):
        inst.crop_and_paste_masks(masks, boxes, "max", 4)
