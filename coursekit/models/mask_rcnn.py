"""Mask R-CNN for the course's small images: torchvision's model, built offline, plus RoI-pooling experiments.

Taught in notebook 07 (instance segmentation; decks 000, 003, 004). Mask R-CNN is Faster R-CNN with a
third branch: for every detected box, a small fully convolutional head predicts a 28 x 28 mask of the
object *inside that box*, one mask per class; the mask is then pasted back into the image. Its one
new operation is RoI Align (:func:`coursekit.ops.roi_align`): RoI pooling without rounding, because a
mask, unlike a class score, must line up with the pixels.

- :func:`torchvision_mask_rcnn`: torchvision's ``MaskRCNN`` sized for 96-128 px scenes on a CPU, on a
  ResNet-18 FPN whose body gets :func:`coursekit.weights.load_backbone_weights` (ImageNet online,
  coursekit's own ResNet-18 offline), or torchvision's COCO-pretrained ResNet-50 Mask R-CNN when its
  weights can be had. Never downloads anything else.
- :class:`MultiScaleRoIPooler` and :func:`swap_roi_poolers`: FPN's multi-scale RoI pooling written out
  (equal to ``torchvision.ops.MultiScaleRoIAlign`` with ``op="align"``), with RoI *pooling* as the other
  choice, to measure what quantisation costs a trained model.

This file holds the networks; predicting, scoring (box and mask AP) and the controlled RoI-pool
experiment are task code, in :mod:`coursekit.instance_segmentation`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "RoIOp",
    "ROI_OPS",
    "SMALL_IMAGE_SETTINGS",
    "torchvision_mask_rcnn",
    "MultiScaleRoIPooler",
    "swap_roi_poolers",
]

RoIOp = Literal["align", "pool"]
ROI_OPS: tuple[str, ...] = ("align", "pool")
Backbone = Literal["resnet18", "resnet50-coco"]
_BACKBONES: tuple[str, ...] = ("resnet18", "resnet50-coco")

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
_COCO_BOX_HIDDEN = 1024  # representation size of the COCO model's box head
_COCO_MASK_CHANNELS = 256  # channels of the COCO model's mask head


# ============================================================================================ builder
def _resnet18_fpn(pretrained: bool, trainable_layers: int, fpn_channels: int, verbose: bool):
    """A ResNet-18 FPN backbone (P2..P6, ``fpn_channels`` each) and where its weights came from."""
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


def _anchor_generator(anchor_sizes: Sequence[int]):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level (5: P2..P6), got {len(anchor_sizes)}")
    return AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)


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
) -> torchvision.models.detection.MaskRCNN:
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

    Returns the model in train mode; ``model.weights_source`` says which weights were loaded
    (``"coco"``, ``"imagenet"``, ``"coursekit-shapes"`` or ``"random"``). Forward: a list of
    ``Tensor[3, H, W]`` in [0, 1] (+ targets ``{"boxes", "labels", "masks"}`` in train mode) -> a loss
    dict (train) or per image ``{"boxes": [N, 4], "labels": [N], "scores": [N], "masks": [N, 1, H, W]}``.
    """
    from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    from coursekit.weights import available

    _check_builder_args(num_classes, backbone, trainable_layers, min_size, max_size)
    common = {**SMALL_IMAGE_SETTINGS, "min_size": min_size, "max_size": max_size,
              "rpn_anchor_generator": _anchor_generator(anchor_sizes), **kwargs}
    if backbone == "resnet50-coco" and pretrained:
        if available(MaskRCNN_ResNet50_FPN_Weights.COCO_V1):
            model = _coco_mask_rcnn(num_classes, trainable_layers, **common)
            model.weights_source = "coco"
            return model
        if verbose:
            print("coursekit: COCO Mask R-CNN weights unavailable (offline): using a ResNet-18 FPN instead")
    body, source = _resnet18_fpn(pretrained, trainable_layers, fpn_channels, verbose)
    pool = body.out_channels * 7 * 7  # the box head sees 7 x 7 RoI features
    model = MaskRCNN(
        body,
        num_classes=None,
        box_head=TwoMLPHead(pool, box_hidden),
        box_predictor=torchvision.models.detection.faster_rcnn.FastRCNNPredictor(box_hidden, num_classes),
        mask_head=MaskRCNNHeads(body.out_channels, (mask_channels,) * 4, dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        **common,
    )
    model.weights_source = source
    return model


def _check_builder_args(num_classes: int, backbone: str, trainable_layers: int, min_size: int, max_size: int):
    if backbone not in _BACKBONES:
        raise ValueError(f"backbone must be one of {_BACKBONES}, got {backbone!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be an int >= 2, got {num_classes!r}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5 (ResNet stages from the top), got {trainable_layers}")
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}")


# ====================================================================================== RoI poolers
def _feature_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
    """Feature cells per image pixel, rounded to a power of 2 (1/4 for P2, ...): torchvision's rule."""
    return 2.0 ** round(math.log2(feature.shape[-2] / image_size[0]))


class MultiScaleRoIPooler(nn.Module):
    """FPN's multi-scale RoI pooling: each RoI is pooled from the pyramid level that suits its size.

    A RoI of ``w x h`` image pixels goes to level ``k = floor(4 + log2(sqrt(w h) / 224))`` (FPN paper,
    eq. 1), clamped to the levels given: small RoIs read the fine P2 map (stride 4), large ones the
    coarse P5 (stride 32). Then one RoI op per level:

    - ``op="align"``: ``torchvision.ops.roi_align`` (``aligned=False``, ``sampling_ratio``), Mask R-CNN;
      equal to ``torchvision.ops.MultiScaleRoIAlign`` (``tests/test_mask_rcnn.py``).
    - ``op="pool"``: ``torchvision.ops.roi_pool``, Fast R-CNN's quantised max-pooling.

    Args:
        featmap_names: the feature maps to pool from, finest first (``["0", "1", "2", "3"]``).
        output_size: ``7`` for the box head, ``14`` for the mask head.

    Forward: ``x`` (dict name -> ``Tensor[B, C, H_l, W_l]``), ``boxes`` (list of ``Tensor[K_i, 4]`` xyxy
    image pixels), ``image_shapes`` (list of ``(H, W)`` after the model's resize) -> ``Tensor[K, C, o, o]``.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int,
        sampling_ratio: int = 2,
        op: RoIOp = "align",
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if op not in ROI_OPS:
            raise ValueError(f"op must be one of {ROI_OPS}, got {op!r}")
        if not featmap_names:
            raise ValueError("featmap_names must name at least one feature map, e.g. ['0', '1', '2', '3']")
        self.featmap_names = list(featmap_names)
        self.output_size = (int(output_size), int(output_size))
        self.sampling_ratio = sampling_ratio
        self.op = op
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _levels(self, boxes: list[Tensor], scales: list[float]) -> Tensor:
        """Index into the pyramid (0 = finest map given) of every RoI: ``Tensor[K]`` int64."""
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))  # e.g. 2 (P2), 5 (P5)
        size = torch.cat([torchvision.ops.box_area(b) for b in boxes]).sqrt()  # (K,)
        k = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale) + 1e-6)
        return (k.clamp(k_min, k_max) - k_min).long()

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.op == "align":
            return torchvision.ops.roi_align(feature, rois, self.output_size, scale, self.sampling_ratio)
        return torchvision.ops.roi_pool(feature, rois, self.output_size, scale)

    def forward(self, x: Mapping[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        from coursekit.ops import boxes_to_rois

        features = [x[name] for name in self.featmap_names]
        # the padded batch size: torchvision measures every level against the largest image
        batch_size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [_feature_scale(f, batch_size) for f in features]
        rois = boxes_to_rois(boxes)  # (K, 5): image index, x1, y1, x2, y2
        levels = self._levels(boxes, scales)  # (K,)
        C = features[0].shape[1]
        out = features[0].new_zeros(len(rois), C, *self.output_size)  # (K, C, o, o)
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            idx = torch.where(levels == level)[0]
            out[idx] = self._pool(feature, rois[idx], scale).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"featmap_names={self.featmap_names}, output_size={self.output_size}, op={self.op!r}"


def swap_roi_poolers(model: nn.Module, op: RoIOp = "pool", copy_model: bool = True) -> nn.Module:
    """The same Mask R-CNN with its box and mask RoI poolers replaced by :class:`MultiScaleRoIPooler` (``op``).

    Same feature maps, output sizes (7 and 14) and sampling ratio; only the RoI op changes, so
    evaluating both models measures what RoI pooling's rounding costs (notebook 07). The weights are
    shared with nothing: by default a deep copy is changed and returned (``copy_model=False``: in place).
    """
    if op not in ROI_OPS:
        raise ValueError(f"op must be one of {ROI_OPS}, got {op!r}")
    heads = getattr(model, "roi_heads", None)
    if heads is None or getattr(heads, "mask_roi_pool", None) is None:
        raise ValueError("model must be a torchvision MaskRCNN (roi_heads with box_roi_pool and mask_roi_pool)")
    model = copy.deepcopy(model) if copy_model else model
    for name in ("box_roi_pool", "mask_roi_pool"):
        old = getattr(model.roi_heads, name)
        new = MultiScaleRoIPooler(old.featmap_names, old.output_size[0], old.sampling_ratio, op=op)
        setattr(model.roi_heads, name, new)
    return model
