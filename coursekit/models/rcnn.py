"""The R-CNN family, small enough to train on a CPU: R-CNN, Fast R-CNN, and a Faster R-CNN with a
from-scratch Region Proposal Network (torchvision's ``FasterRCNN`` for small images:
:mod:`coursekit.models.torchvision_detection`).

Taught in notebook 04 (decks 000, 001, 003, 004). The three detectors share one backbone (the first
layers of a pretrained ResNet-18, :class:`ResNet18Trunk`) and one per-region head (:class:`BoxHead`:
two FC layers, then class scores and class-specific box deltas), so they differ *only* in what the
lecture says they differ in:

- :class:`RCNN`: crop every proposal out of the **image**, warp it to a fixed size (227 x 227 in the
  paper, ``warp_size`` here), run the backbone on each crop: one forward pass per proposal.
- :class:`FastRCNN`: run the backbone **once** per image, cut every proposal out of the **feature map**
  with RoI pooling (:func:`coursekit.ops.roi_pool`): one forward pass per image.
- :class:`TwoStageDetector` (Faster R-CNN): a Fast R-CNN whose proposals come from an :class:`RPN` on the
  same feature map instead of Selective Search; trained with the four losses of deck 000.

Every detector's ``forward(images, targets=None, *, proposals=None)`` returns, like torchvision's
detectors, a loss dict in train mode and ``[{"boxes", "labels", "scores"}]`` in eval mode. The losses,
the target assignment and the post-processing are written out here and equal torchvision's
(``tests/test_rcnn.py``). Boxes are float ``xyxy`` pixels; label 0 is background.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from coursekit.anchors import (
    BACKGROUND,
    IGNORE,
    generate_anchors,
    labels_from_matches,
    match_anchors,
    sample_balanced,
)
from coursekit.boxes import decode_boxes, encode_boxes
from coursekit.models.registry import Smoke, register_model
from coursekit.ops import roi_align, roi_pool

__all__ = [
    "HEAD_BOX_WEIGHTS",
    "ResNet18Trunk",
    "BoxHead",
    "RCNN",
    "FastRCNN",
    "RPN",
    "TwoStageDetector",
    "warp_regions",
    "sample_proposals",
    "fast_rcnn_loss",
    "rpn_targets",
    "rpn_loss",
    "postprocess_detections",
]

# NMS runs thousands of times per epoch here: the detectors call torchvision's compiled NMS, which
# coursekit.boxes.nms reproduces exactly (notebook 05 teaches it; tests/test_boxes.py checks it).
_nms, _batched_nms = torchvision.ops.nms, torchvision.ops.batched_nms
# The head regresses (10 dx, 10 dy, 5 dw, 5 dh): scaled so the four targets have similar spread (torchvision).
HEAD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_SMOOTH_L1_BETA = 1 / 9  # torchvision's smooth-L1 beta for both box losses
_LAYERS = ("layer1", "layer2", "layer3")
_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16}
_CHANNELS = {"layer1": 64, "layer2": 128, "layer3": 256}
Proposer = Callable[[Tensor], Tensor]  # image Tensor[3, H, W] -> proposals Tensor[K, 4]


# ============================================================================================ backbone
class ResNet18Trunk(nn.Module):
    """The first layers of a ResNet-18: ``Tensor[B, 3, H, W]`` in [0, 1] -> ``Tensor[B, C, H/s, W/s]``.

    Args:
        last_layer: ``"layer1"`` (C = 64, stride s = 4), ``"layer2"`` (128, 8) or ``"layer3"`` (256, 16).
        pretrained: load :func:`coursekit.weights.load_backbone_weights` (ImageNet online, coursekit's
            own ResNet-18 offline, one line printed); ``False``: random weights.
        freeze_stem: keep the stem and ``layer1`` fixed (as torchvision's detectors do): faster, and
            the first filters are generic anyway.

    Inputs are normalised with ImageNet's mean and std inside; BatchNorm is frozen (its statistics
    come from pretraining: a detection batch of 2 images is too small to estimate them).
    """

    def __init__(
        self,
        last_layer: Literal["layer1", "layer2", "layer3"] = "layer2",
        pretrained: bool = True,
        freeze_stem: bool = True,
        verbose: bool = True,
    ):
        super().__init__()
        if last_layer not in _LAYERS:
            raise ValueError(f"last_layer must be one of {_LAYERS}, got {last_layer!r}")
        from coursekit.weights import IMAGENET_MEAN, IMAGENET_STD, load_backbone_weights

        resnet = torchvision.models.resnet18(weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d)
        self.source = load_backbone_weights(resnet, verbose=verbose) if pretrained else "random"
        names = ["conv1", "bn1", "relu", "maxpool", *_LAYERS[: _LAYERS.index(last_layer) + 1]]
        self.body = nn.Sequential(*(getattr(resnet, n) for n in names))
        if freeze_stem:
            for name in ("conv1", "bn1", "layer1"):
                getattr(resnet, name).requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.out_channels = _CHANNELS[last_layer]
        self.stride = _STRIDES[last_layer]

    def forward(self, x: Tensor) -> Tensor:
        return self.body((x - self.mean) / self.std)


# ============================================================================================== heads
class BoxHead(nn.Module):
    """Fast R-CNN's per-region head: ``Tensor[K, C, p, p]`` -> class logits ``Tensor[K, num_classes]`` and
    class-specific deltas ``Tensor[K, num_classes * 4]`` (``HEAD_BOX_WEIGHTS`` encoding).

    Two fully connected layers (``hidden`` units), then the two sibling outputs of the paper: a
    softmax classifier over ``num_classes`` (background included) and one box regressor per class.
    """

    def __init__(self, in_channels: int, num_classes: int, pool_size: int = 7, hidden: int = 256):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too, so it must be >= 2, got {num_classes}")
        self.pool_size = pool_size
        self.fc1 = nn.Linear(in_channels * pool_size * pool_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))  # (K, hidden)
        return self.cls_score(x), self.bbox_pred(x)


class RPN(nn.Module):
    """Region Proposal Network (Faster R-CNN) on one feature map, written out.

    A 3x3 conv slides over the features; at every cell, for each of its ``A = len(sizes) *
    len(aspect_ratios)`` anchors, a 1x1 conv predicts an objectness logit (object / not object) and
    another the deltas ``(dx, dy, dw, dh)`` that move the anchor onto the object.

    Training (:func:`rpn_targets`, :func:`rpn_loss`): an anchor is positive if its IoU with a ground truth
    is ``>= fg_iou`` (or it is some ground truth's best anchor), negative if ``< bg_iou``, ignored in
    between; each image contributes ``batch_size_per_image`` anchors with at most ``positive_fraction``
    positives. Proposals: decode all anchors, clip, drop tiny boxes, keep the ``pre_nms_top_n`` best,
    NMS at ``nms_thresh``, keep ``post_nms_top_n``.
    """

    def __init__(
        self,
        in_channels: int,
        stride: int,
        sizes: Sequence[float] = (16.0, 32.0, 64.0),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        *,
        fg_iou: float = 0.7,
        bg_iou: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: int = 1000,
        post_nms_top_n: int = 300,
        nms_thresh: float = 0.7,
        min_size: float = 1.0,
    ):
        super().__init__()
        self.stride, self.sizes, self.aspect_ratios = stride, tuple(sizes), tuple(aspect_ratios)
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_thresh, self.min_size = nms_thresh, min_size
        A = len(self.sizes) * len(self.aspect_ratios)
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, A, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * A, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):  # torchvision's initialisation
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    @property
    def anchors_per_cell(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def anchors(self, feature_size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
        """All anchors, ``Tensor[h * w * A, 4]`` xyxy, in the order :meth:`head` flattens its outputs."""
        return generate_anchors([feature_size], image_size, [self.sizes], [self.aspect_ratios])

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``Tensor[B, C, h, w]`` -> objectness logits ``Tensor[B, h*w*A]``, deltas ``Tensor[B, h*w*A, 4]``."""
        B, _, h, w = features.shape
        A = self.anchors_per_cell
        t = F.relu(self.conv(features))
        logits = self.cls_logits(t).permute(0, 2, 3, 1).reshape(B, h * w * A)  # cell-major, then anchor
        deltas = self.bbox_pred(t).view(B, A, 4, h, w).permute(0, 3, 4, 1, 2).reshape(B, h * w * A, 4)
        return logits, deltas

    def forward(
        self, features: Tensor, image_size: tuple[int, int], targets: Sequence[Mapping[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals (one ``Tensor[P_i, 4]`` per image, best first) and, given targets, the two RPN losses."""
        logits, deltas = self.head(features)  # (B, A), (B, A, 4)
        anchors = self.anchors(tuple(features.shape[-2:]), image_size).to(features)
        proposals = self._propose(logits.detach(), deltas.detach(), anchors, image_size)
        if targets is None:
            return proposals, {}
        labels, matched = rpn_targets(anchors, [t["boxes"] for t in targets], self.fg_iou, self.bg_iou)
        regression_targets = torch.stack([encode_boxes(m, anchors) for m in matched])  # (B, A, 4)
        positive, negative = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        loss_objectness, loss_box = rpn_loss(logits, deltas, labels, regression_targets, positive, negative)
        return proposals, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}

    def _propose(self, logits: Tensor, deltas: Tensor, anchors: Tensor, image_size: tuple[int, int]) -> list[Tensor]:
        proposals = []
        for scores, d in zip(logits, deltas, strict=True):
            boxes = _clip(decode_boxes(d, anchors), image_size)
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = (wh >= self.min_size).all(1)
            boxes, scores = boxes[keep], scores[keep]
            top = scores.topk(min(self.pre_nms_top_n, len(scores))).indices
            boxes, scores = boxes[top], scores[top]
            proposals.append(boxes[_nms(boxes, scores, self.nms_thresh)[: self.post_nms_top_n]])
        return proposals


# ======================================================================================= target logic
def rpn_targets(
    anchors: Tensor, gt_boxes: Sequence[Tensor], fg_iou: float = 0.7, bg_iou: float = 0.3
) -> tuple[Tensor, list[Tensor]]:
    """The RPN's labels for every anchor of every image, and the box each anchor should move to.

    Args:
        anchors (Tensor[A, 4]): the same anchors for every image.
        gt_boxes: one ``Tensor[G_i, 4]`` per image.

    Returns ``labels`` (float ``Tensor[B, A]``: 1 object, 0 background, -1 ignored) and ``matched``
    (one ``Tensor[A, 4]`` per image: the matched ground truth; the anchor itself where there is none,
    so its regression target is 0). Equal to torchvision's ``RegionProposalNetwork.assign_targets_to_anchors``
    (whose matched box is ``gt[0]`` for unmatched anchors: those take no part in the box loss).
    """
    labels, matched = [], []
    for gt in gt_boxes:
        m = match_anchors(anchors, gt.to(anchors), high=fg_iou, low=bg_iou, allow_low_quality=True)  # (A,)
        labels.append(labels_from_matches(m).to(anchors.dtype))
        matched.append(torch.where((m >= 0)[:, None], gt.to(anchors)[m.clamp(min=0)], anchors) if len(gt) else anchors)
    return torch.stack(labels), matched


def rpn_loss(
    objectness: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor, positive: Tensor, negative: Tensor
) -> tuple[Tensor, Tensor]:
    """The two first-stage losses of Faster R-CNN: ``(loss_objectness, loss_rpn_box_reg)``.

    Args:
        objectness (Tensor[B, A]): logits; deltas (Tensor[B, A, 4]): predicted ``(dx, dy, dw, dh)``.
        labels (Tensor[B, A]): 1 / 0 / -1; regression_targets (Tensor[B, A, 4]).
        positive, negative (bool Tensor[B, A]): the sampled anchors (:func:`coursekit.anchors.sample_balanced`).

    Objectness: binary cross-entropy averaged over the sampled anchors. Box: smooth L1 (beta 1/9)
    summed over the sampled *positives* and divided by the number of sampled anchors. Same as
    torchvision's ``RegionProposalNetwork.compute_loss``.
    """
    sampled = positive | negative
    num_sampled = max(int(sampled.sum()), 1)
    loss_objectness = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled].to(objectness.dtype))
    loss_box = F.smooth_l1_loss(
        deltas[positive], regression_targets[positive], beta=_SMOOTH_L1_BETA, reduction="sum"
    ) / num_sampled
    return loss_objectness, loss_box


def sample_proposals(
    proposals: Sequence[Tensor],
    targets: Sequence[Mapping[str, Tensor]],
    batch_size_per_image: int = 64,
    positive_fraction: float = 0.25,
    fg_iou: float = 0.5,
    bg_iou: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """The regions the second stage trains on, as in Fast R-CNN: "proposals with IoU > 0.5 are positives,
    a fixed share of positives per batch" (deck 001).

    Per image: the ground-truth boxes join the proposals (so positives exist from the first step), each
    is matched to its best ground truth; IoU ``>= fg_iou`` -> that object's class, ``< bg_iou`` ->
    background (0); then ``batch_size_per_image`` regions with at most ``positive_fraction`` positives.

    Returns ``rois`` (one ``Tensor[k_i, 4]`` per image, positives first), ``labels`` (int64 ``Tensor[K]``,
    all images concatenated) and ``regression_targets`` (``Tensor[K, 4]``, ``HEAD_BOX_WEIGHTS`` encoding).
    Same assignment as torchvision's ``RoIHeads.select_training_samples``.
    """
    if len(proposals) != len(targets):
        raise ValueError(f"one proposal tensor per image: got {len(proposals)} for {len(targets)} targets")
    rois, labels, regression = [], [], []
    for props, target in zip(proposals, targets, strict=True):
        gt, gt_labels = target["boxes"].to(props), target["labels"]
        props = torch.cat([props, gt])
        m = match_anchors(props, gt, high=fg_iou, low=bg_iou, allow_low_quality=False)  # (P,)
        lab = gt_labels[m.clamp(min=0)] if len(gt) else torch.zeros_like(m)
        lab = lab.masked_fill(m == BACKGROUND, 0).masked_fill(m == IGNORE, -1)
        positive, negative = sample_balanced(lab, batch_size_per_image, positive_fraction, generator)
        keep = torch.cat([positive.nonzero()[:, 0], negative.nonzero()[:, 0]])
        matched = gt[m[keep].clamp(min=0)] if len(gt) else props[keep]
        rois.append(props[keep])
        labels.append(lab[keep])
        regression.append(encode_boxes(matched, props[keep], HEAD_BOX_WEIGHTS))
    return rois, torch.cat(labels), torch.cat(regression)


def fast_rcnn_loss(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor
) -> tuple[Tensor, Tensor]:
    """The two second-stage losses: ``(loss_classifier, loss_box_reg)``.

    Args:
        class_logits (Tensor[K, C]); box_regression (Tensor[K, C * 4]): the head's outputs.
        labels (int64 Tensor[K]): 0 background, 1..C-1 objects; regression_targets (Tensor[K, 4]).

    Softmax cross-entropy over all sampled regions; smooth L1 (beta 1/9) between the *true class's*
    deltas and the targets, positives only, divided by K. Same as torchvision's ``fastrcnn_loss``.
    """
    K, C = class_logits.shape
    if box_regression.shape != (K, C * 4):
        raise ValueError(
            f"box_regression must be Tensor[{K}, {C * 4}] (4 deltas per class), got {list(box_regression.shape)}"
        )
    loss_classifier = F.cross_entropy(class_logits, labels)
    positive = (labels > 0).nonzero()[:, 0]
    deltas = box_regression.reshape(K, C, 4)[positive, labels[positive]]  # (P, 4): the true class's deltas
    loss_box = F.smooth_l1_loss(deltas, regression_targets[positive], beta=_SMOOTH_L1_BETA, reduction="sum")
    return loss_classifier, loss_box / max(K, 1)


def _clip(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    H, W = image_size
    x = boxes[..., 0::2].clamp(0, W)
    y = boxes[..., 1::2].clamp(0, H)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def postprocess_detections(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: Sequence[Tensor],
    image_size: tuple[int, int],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> list[dict[str, Tensor]]:
    """From the head's outputs to detections: ``[{"boxes": [D, 4], "scores": [D], "labels": [D]}]`` per image.

    Every (region, class) pair is a candidate box: the region moved by that class's deltas, clipped to
    the image, scored by the softmax probability; candidates scoring ``<= score_thresh`` or nearly empty
    are dropped, then NMS per class and the best ``detections_per_img`` kept. Same result as
    torchvision's ``RoIHeads.postprocess_detections``.
    """
    K, C = class_logits.shape
    props = torch.cat(list(proposals)) if len(proposals) else class_logits.new_zeros(0, 4)
    if len(props) != K:
        raise ValueError(f"{K} rows of class_logits but {len(props)} proposals in all")
    repeated = props[:, None, :].expand(K, C, 4).reshape(-1, 4)
    boxes = _clip(decode_boxes(box_regression.reshape(-1, 4), repeated, HEAD_BOX_WEIGHTS), image_size).view(K, C, 4)
    scores = F.softmax(class_logits, -1)
    labels = torch.arange(C, device=class_logits.device).expand(K, C)
    out = []
    for b, s, lab in zip(*(t.split([len(p) for p in proposals]) for t in (boxes, scores, labels)), strict=True):
        b, s, lab = b[:, 1:].reshape(-1, 4), s[:, 1:].reshape(-1), lab[:, 1:].reshape(-1)  # drop background
        keep = (s > score_thresh) & ((b[:, 2:] - b[:, :2]) >= 1e-2).all(1)
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = _batched_nms(b, s, lab, nms_thresh)[:detections_per_img]
        out.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return out


# ========================================================================================== detectors
def _as_batch(images: Sequence[Tensor] | Tensor) -> Tensor:
    """A list of ``Tensor[3, H, W]`` of one size (or a ``Tensor[B, 3, H, W]``) -> ``Tensor[B, 3, H, W]``."""
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be a Tensor[B, 3, H, W] or a list of Tensor[3, H, W], got {list(images.shape)}"
            )
        return images
    if not images:
        raise ValueError("images is empty")
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1 or len(next(iter(sizes))) != 3:
        raise ValueError(
            f"all images must be Tensor[3, H, W] of one size (resize them first), got sizes {sorted(sizes)}"
        )
    return torch.stack(list(images))


def warp_regions(images: Tensor, boxes: Sequence[Tensor], size: int) -> Tensor:
    """R-CNN's "crop and warp": every box cut out of its image and resized to ``size x size`` (the aspect
    ratio is not kept). ``images`` Tensor[B, 3, H, W], ``boxes`` one Tensor[K_i, 4] per image
    -> ``Tensor[K, 3, size, size]``.

    One bilinear sample per output pixel (RoI Align with ``sampling_ratio=1``): the whole image as a box
    gives ``F.interpolate(images, size, mode="bilinear")``, all crops in one batched call.
    """
    return torchvision.ops.roi_align(images, list(boxes), output_size=size, sampling_ratio=1, aligned=True)


class _RegionDetector(nn.Module):
    """What R-CNN, Fast R-CNN and Faster R-CNN share: propose, classify and refine each region.

    Subclasses say what the "features" of an image are (:meth:`image_features`), where proposals come
    from (:meth:`propose`) and how a region's features are cut out (:meth:`region_features`).
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: BoxHead,
        proposer: Proposer | None = None,
        *,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ):
        super().__init__()
        self.trunk, self.head, self.proposer = trunk, head, proposer
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.backbone_passes = 0  # images or crops that went through the trunk: R-CNN's cost, counted

    def _trunk(self, x: Tensor) -> Tensor:
        self.backbone_passes += len(x)
        return self.trunk(x)

    # -- the three parts a subclass defines ------------------------------------------------------
    def image_features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def region_features(self, features: Tensor, rois: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def propose(
        self, images: Tensor, features: Tensor, proposals: Sequence[Tensor] | None, targets: Any
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """External proposals: the ones given, or the ``proposer``'s (Selective Search) for each image."""
        if proposals is None:
            if self.proposer is None:
                raise ValueError("pass proposals=[Tensor[K, 4] per image] or build the detector with a proposer")
            proposals = [self.proposer(im.cpu()).to(images.device) for im in images]
        if len(proposals) != len(images):
            raise ValueError(f"one proposal tensor per image: got {len(proposals)} for {len(images)} images")
        return [p.to(images) for p in proposals], {}

    # -- the slide -------------------------------------------------------------------------------
    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        *,
        proposals: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Train mode: the loss dict (``targets`` required). Eval mode: detections per image."""
        x = _as_batch(images)  # (B, 3, H, W)
        if self.training and targets is None:
            raise ValueError("in train mode the detector needs targets; call model.eval() to detect")
        features = self.image_features(x)
        rois, losses = self.propose(x, features, proposals, targets if self.training else None)
        if self.training:
            rois, labels, regression_targets = sample_proposals(
                rois, targets, self.batch_size_per_image, self.positive_fraction
            )
        class_logits, box_regression = self.head(self.region_features(features, rois))
        if self.training:
            loss_classifier, loss_box = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets)
            return {**losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box}
        return postprocess_detections(
            class_logits, box_regression, rois, tuple(x.shape[-2:]),
            self.score_thresh, self.nms_thresh, self.detections_per_img,
        )


class RCNN(_RegionDetector):
    """R-CNN (Girshick et al., 2014): warp each proposal's pixels to ``warp_size``, one backbone pass per crop.

    ``warp_size`` defaults to ``7 * trunk.stride`` so a crop's feature map is exactly the head's 7 x 7
    (the paper: 227 x 227 crops for AlexNet). Crops go through the trunk ``chunk`` at a time.
    """

    def __init__(
        self, trunk: ResNet18Trunk, num_classes: int, proposer: Proposer | None = None, *,
        warp_size: int | None = None, hidden: int = 256, chunk: int = 256, **kwargs: Any,
    ):
        super().__init__(trunk, BoxHead(trunk.out_channels, num_classes, 7, hidden), proposer, **kwargs)
        self.warp_size = warp_size or 7 * trunk.stride
        self.chunk = chunk

    def image_features(self, images: Tensor) -> Tensor:
        return images  # R-CNN shares nothing between regions: its "features" are the pixels

    def region_features(self, features: Tensor, rois: list[Tensor]) -> Tensor:
        crops = warp_regions(features, rois, self.warp_size)  # (K, 3, S, S)
        if len(crops) == 0:
            return crops.new_zeros(0, self.trunk.out_channels, 7, 7)
        maps = torch.cat([self._trunk(c) for c in crops.split(self.chunk)])  # one forward pass per crop
        return F.adaptive_max_pool2d(maps, 7)  # (K, C, 7, 7)


class FastRCNN(_RegionDetector):
    """Fast R-CNN (Girshick, 2015): one backbone pass per image, RoI pooling on the feature map.

    ``pool``: ``"roi_pool"`` (the paper's max-pooling on a grid, :func:`coursekit.ops.roi_pool`) or
    ``"roi_align"`` (bilinear, no rounding: :func:`coursekit.ops.roi_align`, Mask R-CNN's fix).
    """

    def __init__(
        self, trunk: ResNet18Trunk, num_classes: int, proposer: Proposer | None = None, *,
        pool: Literal["roi_pool", "roi_align"] = "roi_pool", hidden: int = 256, **kwargs: Any,
    ):
        if pool not in ("roi_pool", "roi_align"):
            raise ValueError(f"pool must be 'roi_pool' or 'roi_align', got {pool!r}")
        super().__init__(trunk, BoxHead(trunk.out_channels, num_classes, 7, hidden), proposer, **kwargs)
        self.pool = pool

    def image_features(self, images: Tensor) -> Tensor:
        return self._trunk(images)  # (B, C, H/s, W/s): shared by every region of the image

    def region_features(self, features: Tensor, rois: list[Tensor]) -> Tensor:
        scale = 1.0 / self.trunk.stride
        if self.pool == "roi_pool":
            return roi_pool(features, rois, output_size=7, spatial_scale=scale)  # (K, C, 7, 7)
        return roi_align(features, rois, output_size=7, spatial_scale=scale, sampling_ratio=2, aligned=True)


class TwoStageDetector(FastRCNN):
    """Faster R-CNN (Ren et al., 2015), small: Fast R-CNN whose proposals come from an :class:`RPN` on
    the same feature map. Train mode returns the four losses of deck 000 (``loss_objectness``,
    ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``), so ``coursekit.train.detection_step``
    trains it like a torchvision detector. ``rpn_kw`` go to :class:`RPN` (anchor sizes, thresholds...).
    """

    def __init__(
        self, trunk: ResNet18Trunk, num_classes: int, *, rpn_kw: Mapping[str, Any] | None = None,
        pool: Literal["roi_pool", "roi_align"] = "roi_pool", hidden: int = 256, **kwargs: Any,
    ):
        super().__init__(trunk, num_classes, None, pool=pool, hidden=hidden, **kwargs)
        self.rpn = RPN(trunk.out_channels, trunk.stride, **dict(rpn_kw or {}))

    def propose(
        self, images: Tensor, features: Tensor, proposals: Sequence[Tensor] | None, targets: Any
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        if proposals is not None:
            return super().propose(images, features, proposals, targets)
        return self.rpn(features, tuple(images.shape[-2:]), targets)


# --------------------------------------------------------------------------------------- registry
def _detector(cls: type, **fixed: Any) -> Callable[..., nn.Module]:
    """``build(num_classes, last_layer="layer2", pretrained=True, **kwargs)``: a fresh trunk for each detector."""

    def build(num_classes: int, last_layer: str = "layer2", pretrained: bool = True, **kwargs: Any) -> nn.Module:
        return cls(ResNet18Trunk(last_layer, pretrained=pretrained), num_classes, **fixed, **kwargs)

    return build


def _smoke_batch(g: torch.Generator) -> tuple:
    """Two 64 px images with one object each, in the detectors' train-mode call ``(images, targets)``."""
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 44.0]]), torch.tensor([[20.0, 12.0, 60.0, 50.0]])]
    targets = [{"boxes": b, "labels": torch.tensor([1 + i])} for i, b in enumerate(boxes)]
    return [torch.rand(3, 64, 64, generator=g) for _ in boxes], targets


def _grid_proposals(image: Tensor) -> Tensor:
    """A fixed 3 x 3 grid of boxes: external proposals for a smoke test (no Selective Search)."""
    H, W = image.shape[-2:]
    cells = [(x, y) for y in range(3) for x in range(3)]
    return torch.tensor([[x * W / 3, y * H / 3, (x + 1) * W / 3, (y + 1) * H / 3] for x, y in cells])


_LOSSES_4 = [()] * 4  # loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg
_SMOKE_KW = {"num_classes": 3, "pretrained": False, "batch_size_per_image": 8}
register_model("rcnn", _detector(RCNN, hidden=16), family="rcnn",
               smoke=Smoke({**_SMOKE_KW, "proposer": _grid_proposals}, _smoke_batch, [()] * 2))
register_model("fast_rcnn", _detector(FastRCNN, hidden=16), family="rcnn",
               smoke=Smoke({**_SMOKE_KW, "proposer": _grid_proposals}, _smoke_batch, [()] * 2))
register_model("faster_rcnn", _detector(TwoStageDetector, hidden=16), family="rcnn",
               smoke=Smoke(_SMOKE_KW, _smoke_batch, _LOSSES_4))
