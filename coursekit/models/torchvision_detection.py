"""torchvision's two-stage detectors built for the course's small images, offline (notebooks 04, 07 and 08).

One builder per model, sharing one backbone (:func:`resnet18_fpn`: a ResNet-18 FPN whose body gets
:func:`coursekit.weights.load_backbone_weights`, ImageNet online and coursekit's own ResNet-18 offline),
one anchor generator (:func:`fpn_anchor_generator`) and one argument check:

- :func:`torchvision_faster_rcnn`: ``FasterRCNN`` (notebook 04's production detector);
- :func:`torchvision_mask_rcnn`: ``MaskRCNN`` with smaller heads, so a CPU trains it in minutes (notebook 07);
- :func:`torchvision_keypoint_rcnn`: ``KeypointRCNN`` likewise (notebook 08's production pose model).

With ``backbone="resnet50-coco"`` each returns torchvision's COCO-pretrained model when its weights can be
had, else the ResNet-18 FPN with one printed line. Nothing else is ever downloaded. Both return
``(model, weights)``: the weights' source is returned, not attached to torchvision's module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torchvision

from coursekit.models.registry import Smoke, register_model

__all__ = [
    "SMALL_IMAGE_SETTINGS",
    "resnet18_fpn",
    "fpn_anchor_generator",
    "check_builder_args",
    "torchvision_faster_rcnn",
    "torchvision_mask_rcnn",
    "torchvision_keypoint_rcnn",
]

Backbone = Literal["resnet18", "resnet50-coco"]
_BACKBONES: tuple[str, ...] = get_args(Backbone)

# torchvision's defaults are sized for 800 px COCO photos; these fit 96-128 px scenes of <= 4 objects.
SMALL_IMAGE_SETTINGS: dict[str, int] = {
    "rpn_pre_nms_top_n_train": 600,  # proposals kept before NMS, per FPN level (torchvision: 2000)
    "rpn_post_nms_top_n_train": 300,  # proposals kept after NMS (2000): a 128 px scene has few objects
    "rpn_pre_nms_top_n_test": 300,  # (1000)
    "rpn_post_nms_top_n_test": 100,  # (1000)
    "box_batch_size_per_image": 64,  # RoIs sampled per image for the box and mask losses (512)
    "box_detections_per_img": 50,  # detections kept per image (100)
}
_RESNET18_CHANNELS = (64, 128, 256, 512)  # layer1..layer4 outputs: FPN levels P2..P5
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")  # torchvision's unfreezing order
_COCO_BOX_HIDDEN = 1024  # representation size of the COCO models' box head
_COCO_MASK_CHANNELS = 256  # channels of the COCO model's mask head
_COCO_KEYPOINT_CHANNELS = 512  # channels of the COCO model's keypoint head


def resnet18_fpn(pretrained: bool, trainable_layers: int, fpn_channels: int, verbose: bool = True):
    """A ResNet-18 FPN backbone (P2..P6, ``fpn_channels`` each, frozen BatchNorm) and where its weights came
    from (:func:`coursekit.weights.load_backbone_weights`, or ``"random"``)."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    from coursekit.weights import load_backbone_weights

    # Frozen BatchNorm: detection batches of 2-8 images are too small to estimate statistics.
    resnet = torchvision.models.resnet18(weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d)
    source = load_backbone_weights(resnet, verbose=verbose) if pretrained else "random"
    trainable = _TRAINABLE_ORDER[:trainable_layers]
    for name, param in resnet.named_parameters():
        param.requires_grad_(name.startswith(trainable))
    layers = {f"layer{i + 1}": str(i) for i in range(4)}  # feature maps named "0".."3", as torchvision
    return BackboneWithFPN(resnet, layers, list(_RESNET18_CHANNELS), fpn_channels), source


def fpn_anchor_generator(anchor_sizes: Sequence[int]):
    """One anchor size per FPN level P2..P6, ratios 0.5 / 1 / 2 (torchvision's 32..512 px do not fit
    10-64 px objects)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level (5: P2..P6), got {len(anchor_sizes)}")
    return AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)


def _small_image_kwargs(min_size: int, max_size: int, anchor_sizes: Sequence[int], **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments every builder passes to torchvision: :data:`SMALL_IMAGE_SETTINGS`, the input size
    and the anchors; ``kwargs`` override them."""
    return {**SMALL_IMAGE_SETTINGS, "min_size": min_size, "max_size": max_size,
            "rpn_anchor_generator": fpn_anchor_generator(anchor_sizes), **kwargs}


def _use_coco(weights: Any, what: str, backbone: str, pretrained: bool, verbose: bool) -> bool:
    """Whether to build torchvision's COCO-pretrained ``what``: asked for, and ``weights`` can be had;
    when they cannot, one printed line says that the ResNet-18 FPN is used instead."""
    from coursekit.weights import available

    if backbone != "resnet50-coco" or not pretrained:
        return False
    if available(weights):
        return True
    if verbose:
        print(f"coursekit: COCO {what} weights unavailable (offline): using a ResNet-18 FPN instead")
    return False


def _box_heads(out_channels: int, box_hidden: int, num_classes: int) -> dict[str, Any]:
    """The box head (two FC layers of ``box_hidden`` on 7 x 7 RoI features) and its predictor."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    return {"box_head": TwoMLPHead(out_channels * 7 * 7, box_hidden),
            "box_predictor": FastRCNNPredictor(box_hidden, num_classes)}


def _coco_mask_rcnn(num_classes: int, trainable_layers: int, **common: Any):
    """torchvision's COCO Mask R-CNN with new box and mask predictors for ``num_classes``."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    model = maskrcnn_resnet50_fpn(weights=MaskRCNN_ResNet50_FPN_Weights.COCO_V1, weights_backbone=None,
                                  trainable_backbone_layers=trainable_layers, **common)
    # New last layers for our classes; everything before them keeps what COCO taught it.
    model.roi_heads.box_predictor = FastRCNNPredictor(_COCO_BOX_HIDDEN, num_classes)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(_COCO_MASK_CHANNELS, _COCO_MASK_CHANNELS, num_classes)
    return model


def torchvision_mask_rcnn(
    num_classes: int,
    *,
    backbone: Backbone = "resnet18",
    pretrained: bool = True,
    min_size: int = 128,
    max_size: int = 128,
    anchor_sizes: Sequence[int] = (12, 24, 48, 96, 192),
    trainable_layers: int = 3,
    fpn_channels: int = 64,
    box_hidden: int = 256,
    mask_channels: int = 64,
    verbose: bool = True,
    **kwargs: Any,
) -> tuple[torchvision.models.detection.MaskRCNN, str]:
    """torchvision's ``MaskRCNN`` for the course's small images, built without any download (notebook 07).

    Args:
        num_classes: with the background (``Shapes(...).num_classes``: 7).
        backbone: ``"resnet18"``: a ResNet-18 FPN whose body gets :func:`coursekit.weights.load_backbone_weights`
            (ImageNet online, coursekit's Shapes-pretrained ResNet-18 offline), heads trained from scratch;
            ``"resnet50-coco"``: the whole Mask R-CNN pretrained on COCO (new box / mask predictors for
            ``num_classes``) when ``coursekit.weights.available`` says its weights can be had, otherwise
            ``"resnet18"`` with one printed line.
        pretrained: ``False``: random weights, no weights looked up at all (tests).
        min_size, max_size: torchvision resizes every image to these (default 800 / 1333: ~4x slower
            on a CPU for 128 px scenes); equal to the image side means no resizing.
        anchor_sizes: one anchor size per FPN level P2..P6 (ratios 0.5, 1, 2); torchvision's 32..512
            px would not fit 12-64 px objects.
        trainable_layers: ResNet stages left trainable, counted from the top (torchvision's
            ``trainable_backbone_layers``, 0-5).
        fpn_channels, box_hidden, mask_channels: widths of the FPN, of the box head's two FC layers and
            of the mask head's four 3x3 convs (torchvision: 256, 1024, 256; smaller here so a CPU
            trains it in minutes: with 64 / 256 / 64 and 64 RoIs per image a training step of 4 images of
            128 px takes ~1.5 s on one CPU thread, ~2x less than with 128 channels and 128 RoIs).
            Ignored by ``"resnet50-coco"``, which keeps its pretrained heads.
        **kwargs: passed to ``MaskRCNN``; they override :data:`SMALL_IMAGE_SETTINGS`.

    Returns ``(model, weights)``: the model in train mode and which weights were loaded (``"coco"``,
    ``"imagenet"``, ``"coursekit-shapes"`` or ``"random"``; returned, not attached to the module). Forward: a list of
    ``Tensor[3, H, W]`` in [0, 1] (+ targets ``{"boxes", "labels", "masks"}`` in train mode) -> a loss
    dict (train) or per image ``{"boxes": [N, 4], "labels": [N], "scores": [N], "masks": [N, 1, H, W]}``.
    """
    from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    check_builder_args(num_classes, backbone, trainable_layers, min_size, max_size)
    common = _small_image_kwargs(min_size, max_size, anchor_sizes, **kwargs)
    if _use_coco(MaskRCNN_ResNet50_FPN_Weights.COCO_V1, "Mask R-CNN", backbone, pretrained, verbose):
        return _coco_mask_rcnn(num_classes, trainable_layers, **common), "coco"
    body, source = resnet18_fpn(pretrained, trainable_layers, fpn_channels, verbose)
    model = MaskRCNN(
        body,
        num_classes=None,
        **_box_heads(body.out_channels, box_hidden, num_classes),
        mask_head=MaskRCNNHeads(body.out_channels, (mask_channels,) * 4, dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        **common,
    )
    return model, source


def _coco_keypoint_rcnn(num_keypoints: int, num_classes: int, trainable_layers: int, **common: Any):
    """torchvision's COCO Keypoint R-CNN with new box and keypoint predictors (our joints are not COCO's 17)."""
    from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights, keypointrcnn_resnet50_fpn
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor

    model = keypointrcnn_resnet50_fpn(weights=KeypointRCNN_ResNet50_FPN_Weights.COCO_V1, weights_backbone=None,
                                      trainable_backbone_layers=trainable_layers, **common)
    model.roi_heads.box_predictor = FastRCNNPredictor(_COCO_BOX_HIDDEN, num_classes)
    model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(_COCO_KEYPOINT_CHANNELS, num_keypoints)
    return model


def torchvision_keypoint_rcnn(
    num_keypoints: int,
    *,
    num_classes: int = 2,
    backbone: Backbone = "resnet18",
    pretrained: bool = True,
    min_size: int = 64,
    max_size: int = 64,
    anchor_sizes: Sequence[int] = (12, 24, 48, 96, 192),
    trainable_layers: int = 3,
    fpn_channels: int = 64,
    box_hidden: int = 256,
    keypoint_channels: int = 64,
    keypoint_layers: int = 4,
    verbose: bool = True,
    **kwargs: Any,
) -> tuple[torchvision.models.detection.KeypointRCNN, str]:
    """torchvision's ``KeypointRCNN`` for the course's small images, built without any download (notebook 08).

    Faster R-CNN finds the people; a head on 14 x 14 RoIAlign features predicts one 56 x 56 heatmap per
    keypoint inside each person's box, trained with a cross-entropy over the heatmap's cells.

    Args:
        num_keypoints: joints per person (``StickFigures``: 15; COCO: 17).
        num_classes: with the background (2: background and person).
        backbone, pretrained, min_size, max_size, anchor_sizes, trainable_layers, fpn_channels, box_hidden:
            as :func:`torchvision_mask_rcnn` (``"resnet50-coco"``: torchvision's COCO Keypoint R-CNN with new
            box and keypoint predictors, when its weights can be had).
        keypoint_channels, keypoint_layers: the keypoint head's 3x3 convs (torchvision: 8 of 512 channels;
            4 of 64 here so that a CPU fine-tunes it in minutes). Ignored by ``"resnet50-coco"``.
        **kwargs: passed to ``KeypointRCNN``; they override :data:`SMALL_IMAGE_SETTINGS`.

    Returns ``(model, weights)`` as :func:`torchvision_mask_rcnn`. Forward: a list of ``Tensor[3, H, W]``
    in [0, 1] (+ targets ``{"boxes", "labels", "keypoints": Tensor[N, K, 3] (x, y, visibility)}`` in train
    mode; :func:`coursekit.pose.keypoint_rcnn_target` makes them) -> a loss dict (train) or per image
    ``{"boxes", "labels", "scores", "keypoints": [N, K, 3], "keypoints_scores": [N, K]}``.
    """
    from torchvision.models.detection import KeypointRCNN, KeypointRCNN_ResNet50_FPN_Weights
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

    check_builder_args(num_classes, backbone, trainable_layers, min_size, max_size)
    if not isinstance(num_keypoints, int) or num_keypoints < 1:
        raise ValueError(f"num_keypoints must be a positive int (StickFigures: 15), got {num_keypoints!r}")
    common = _small_image_kwargs(min_size, max_size, anchor_sizes, **kwargs)
    if _use_coco(KeypointRCNN_ResNet50_FPN_Weights.COCO_V1, "Keypoint R-CNN", backbone, pretrained, verbose):
        return _coco_keypoint_rcnn(num_keypoints, num_classes, trainable_layers, **common), "coco"
    body, source = resnet18_fpn(pretrained, trainable_layers, fpn_channels, verbose)
    model = KeypointRCNN(
        body,
        num_classes=None,
        **_box_heads(body.out_channels, box_hidden, num_classes),
        keypoint_head=KeypointRCNNHeads(body.out_channels, (keypoint_channels,) * keypoint_layers),
        keypoint_predictor=KeypointRCNNPredictor(keypoint_channels, num_keypoints),
        **common,
    )
    return model, source


def check_builder_args(num_classes: int, backbone: str, trainable_layers: int, min_size: int, max_size: int) -> None:
    """``ValueError`` naming the bad argument of a torchvision detector builder."""
    if backbone not in _BACKBONES:
        raise ValueError(f"backbone must be one of {_BACKBONES}, got {backbone!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be an int >= 2, got {num_classes!r}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5 (ResNet stages from the top), got {trainable_layers}")
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}")


def torchvision_faster_rcnn(
    num_classes: int,
    *,
    backbone: Backbone = "resnet18",
    pretrained: bool = True,
    min_size: int = 128,
    max_size: int = 128,
    anchor_sizes: Sequence[int] = (12, 24, 48, 96, 192),
    trainable_layers: int = 3,
    fpn_channels: int = 256,
    box_batch_size_per_image: int = 64,
    rpn_post_nms_top_n_train: int = 600,
    rpn_post_nms_top_n_test: int = 300,
    verbose: bool = True,
    **kwargs: Any,
) -> tuple[torchvision.models.detection.FasterRCNN, str]:
    """torchvision's ``FasterRCNN`` sized for the course's small images, built without any download (notebook 04).

    Args:
        num_classes: with the background (``dataset.num_classes``).
        backbone: ``"resnet18"``: a ResNet-18 FPN (:func:`resnet18_fpn`) whose body gets
            :func:`coursekit.weights.load_backbone_weights` (ImageNet online, coursekit's own ResNet-18
            offline); ``"resnet50-coco"``: the whole detector pretrained on COCO when its weights can be had
            (a new box predictor for ``num_classes``), else ``"resnet18"`` with one printed line.
        pretrained: ``False`` builds random weights (tests).
        min_size, max_size: torchvision resizes inputs to these (default 800 / 1333, far too slow on a
            CPU for 128-px scenes); equal to the image side means no resizing.
        anchor_sizes: one anchor size per FPN level (P2..P6), ratios 0.5 / 1 / 2.
        trainable_layers: ResNet stages left trainable (torchvision's ``trainable_backbone_layers``).
        fpn_channels: channels of the FPN levels (torchvision: 256).
        box_batch_size_per_image: regions per image for the box head (torchvision: 512).
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals kept per image (torchvision: 2000 /
            1000); a 128-px scene holds a handful of objects, and the box head's cost is per proposal.

    Returns ``(model, weights)`` as :func:`torchvision_mask_rcnn`. Other keywords go to ``FasterRCNN``.
    """
    from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    check_builder_args(num_classes, backbone, trainable_layers, min_size, max_size)
    common = dict(min_size=min_size, max_size=max_size, rpn_anchor_generator=fpn_anchor_generator(anchor_sizes),
                  box_batch_size_per_image=box_batch_size_per_image,
                  rpn_post_nms_top_n_train=rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
                  **kwargs)
    coco = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    if _use_coco(coco, "Faster R-CNN", backbone, pretrained, verbose):
        model = fasterrcnn_resnet50_fpn(weights=coco, weights_backbone=None,
                                        trainable_backbone_layers=trainable_layers, **common)
        model.roi_heads.box_predictor = FastRCNNPredictor(_COCO_BOX_HIDDEN, num_classes)  # a new head
        return model, "coco"
    body, source = resnet18_fpn(pretrained, trainable_layers, fpn_channels, verbose)
    return FasterRCNN(body, num_classes=num_classes, **common), source


# --------------------------------------------------------------------------------------- registry
def _smoke_batch(g: torch.Generator) -> tuple:
    """Two 64 px images with one object (box and mask) each: ``(images, targets)``."""
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 44.0]]), torch.tensor([[20.0, 12.0, 60.0, 50.0]])]
    masks = [torch.zeros(1, 64, 64, dtype=torch.uint8) for _ in boxes]
    for m, b in zip(masks, boxes, strict=True):
        x1, y1, x2, y2 = b[0].int().tolist()
        m[0, y1:y2, x1:x2] = 1
    targets = [{"boxes": b, "labels": torch.tensor([1]), "masks": m} for b, m in zip(boxes, masks, strict=True)]
    return [torch.rand(3, 64, 64, generator=g) for _ in boxes], targets


_TINY = {"num_classes": 3, "pretrained": False, "min_size": 64, "max_size": 64}
register_model("torchvision_faster_rcnn", lambda *a, **kw: torchvision_faster_rcnn(*a, **kw)[0],
               family="torchvision_detection",
               smoke=Smoke({**_TINY, "fpn_channels": 16}, _smoke_batch, [()] * 4))
register_model("torchvision_mask_rcnn", lambda *a, **kw: torchvision_mask_rcnn(*a, **kw)[0],
               family="torchvision_detection",
               smoke=Smoke({**_TINY, "fpn_channels": 16, "box_hidden": 16, "mask_channels": 8}, _smoke_batch,
                           [()] * 5))


def _keypoint_smoke_batch(g: torch.Generator) -> tuple:
    """Two 64 px images with one person of 3 keypoints each (the last one not visible): ``(images, targets)``."""
    images, targets = _smoke_batch(g)
    keypoints = torch.tensor([[[12.0, 12.0, 1.0], [24.0, 30.0, 1.0], [30.0, 40.0, 0.0]]])  # (1, 3, 3)
    targets = [{"boxes": t["boxes"], "labels": t["labels"], "keypoints": keypoints + i * 10} for i, t in
               enumerate(targets)]
    return images, targets


register_model("torchvision_keypoint_rcnn", lambda *a, **kw: torchvision_keypoint_rcnn(*a, **kw)[0],
               family="torchvision_detection",
               smoke=Smoke({"num_keypoints": 3, "pretrained": False, "fpn_channels": 16, "box_hidden": 16,
                            "keypoint_channels": 8, "keypoint_layers": 2}, _keypoint_smoke_batch, [()] * 5))
