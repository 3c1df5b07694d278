"""Timing: how much slower is the readable from-scratch version than the library one?

Used by notebooks 04-07 (and the deck's question "what is the inference time per image? ideas to speed
it up?"). :func:`benchmark` times one call; :func:`ops_table` times every registered case, ours against
the reference, on fixed realistic inputs.

Adding a row is one line::

    add_case("mAP 1k dets", ours=ck.metrics.mean_average_precision, reference=coco_map, make_inputs=make_dets)

``make_inputs(generator)`` builds the arguments (a tuple) from a seeded ``torch.Generator``; both
functions are called with them.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["benchmark", "Case", "Row", "CASES", "add_case", "ops_table", "format_table"]


def _first_tensor(obj) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _synchronize(args: tuple) -> None:
    # CUDA and MPS run asynchronously: wait for the queued kernels, or we would time only the launch
    tensor = _first_tensor(args)
    if tensor is not None and tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)
    elif tensor is not None and tensor.device.type == "mps":
        torch.mps.synchronize()


def benchmark(fn: Callable, *args, repeats: int = 20, warmup: int = 2, **kwargs) -> float:
    """Median wall-clock seconds of ``fn(*args, **kwargs)`` over ``repeats`` calls, after ``warmup`` calls.

    The median, not the mean, so one call slowed down by another process does not move the result.
    Runs under ``torch.no_grad()``: this times inference. The one timer of coursekit:
    :func:`coursekit.train.time_per_image`, the benchmark table and the notebooks' speed tables use it.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with torch.no_grad():
        times = [_timed_call(fn, args, kwargs) for _ in range(warmup + repeats)]
    return statistics.median(times[warmup:])


def _timed_call(fn: Callable, args: tuple, kwargs: dict) -> float:
    """Seconds of one call, with the device's queued work finished before and after it."""
    _synchronize(args)
    start = time.perf_counter()
    fn(*args, **kwargs)
    _synchronize(args)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Case:
    """One row of :func:`ops_table`."""

    name: str  # what is timed, with the input size
    ours: Callable  # the from-scratch function
    reference: Callable  # the trusted implementation it equals
    make_inputs: Callable[[torch.Generator], tuple]  # seeded builder of the positional arguments


@dataclass(frozen=True)
class Row:
    """A measured row: milliseconds per call and ``ratio = ours_ms / reference_ms`` (> 1: ours is slower)."""

    name: str
    ours_ms: float
    reference_ms: float
    ratio: float


CASES: list[Case] = []  # the registry ops_table() runs by default; extend it with add_case


def add_case(
    name: str, ours: Callable, reference: Callable, make_inputs: Callable[[torch.Generator], tuple]
) -> None:
    """Register a row of :func:`ops_table`."""
    CASES.append(Case(name, ours, reference, make_inputs))


def compare(ours: Callable, reference: Callable, *args, repeats: int = 20, warmup: int = 2) -> tuple[float, float]:
    """Median wall-clock seconds of ``ours(*args)`` and of ``reference(*args)``, timed in alternation (ours,
    reference, ours, ...), after ``warmup`` calls of each.

    Why alternate: timed one block after the other, a change in the machine's load between the two blocks
    (another process starting, the host slowing down) becomes part of the ratio; alternating call by call
    exposes both to the same load, so the ratio stays meaningful on a busy machine.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with torch.no_grad():
        pairs = [(_timed_call(ours, args, {}), _timed_call(reference, args, {})) for _ in range(warmup + repeats)]
    ours_s, reference_s = zip(*pairs[warmup:], strict=True)
    return statistics.median(ours_s), statistics.median(reference_s)


def ops_table(cases: list[Case] | None = None, repeats: int = 10, seed: int = 0) -> list[Row]:
    """Time every case (default: :data:`CASES`), ours against the reference, on the same seeded inputs,
    in alternation (:func:`compare`)."""
    rows = []
    for case in CASES if cases is None else cases:
        args = case.make_inputs(torch.Generator().manual_seed(seed))
        ours, ref = (seconds * 1e3 for seconds in compare(case.ours, case.reference, *args, repeats=repeats))
        rows.append(Row(case.name, ours, ref, ours / ref))
    return rows


def format_table(rows: list[Row]) -> str:
    """The rows as a plain-text table (for ``print``)."""
    width = max([len(r.name) for r in rows] + [4])
    lines = [f"{'op':<{width}}  {'ours ms':>9}  {'ref ms':>9}  {'ratio':>7}"]
    lines += [f"{r.name:<{width}}  {r.ours_ms:9.3f}  {r.reference_ms:9.3f}  {r.ratio:7.2f}" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the course's ops
def _rois(g: torch.Generator, k: int, n_images: int, image_size: int) -> Tensor:
    """``k`` RoIs in image pixels with sides from 1/16 to 1/2 of the image, like RPN proposals."""
    wh = (torch.rand(k, 2, generator=g) * 7 / 16 + 1 / 16) * image_size
    xy = torch.rand(k, 2, generator=g) * (image_size - wh)
    return torch.cat([torch.randint(0, n_images, (k, 1), generator=g).float(), xy, xy + wh], dim=1)


def _roi_inputs(g: torch.Generator) -> tuple:
    # a stride-16 feature map of two 800 x 800 images, 256 proposals: Fast R-CNN's box head
    return torch.randn(2, 64, 50, 50, generator=g), _rois(g, 256, 2, 800), 7, 1 / 16


def _conv_transpose_inputs(g: torch.Generator) -> tuple:
    # a 2x learnable upsampling of a U-Net decoder: kernel 4, stride 2, padding 1, 32 -> 16 channels
    return torch.randn(8, 32, 32, 32, generator=g), torch.randn(32, 16, 4, 4, generator=g), 2, 1


def _focal_inputs(g: torch.Generator) -> tuple:
    # 100k anchor x class logits, 1% positives (RetinaNet's imbalance)
    return torch.randn(100_000, generator=g), (torch.rand(100_000, generator=g) < 0.01).float()


_PYRAMID = (
    [(100, 152), (50, 76), (25, 38)],  # an 800 x 1216 image at strides 8, 16, 32
    (800, 1216),
    [(32,), (64,), (128,)],
    [(0.5, 1.0, 2.0)] * 3,
)


def _torchvision_anchors(feature_sizes, image_size, sizes, ratios) -> Tensor:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(1, 1, *image_size), [image_size])
    features = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    return AnchorGenerator(tuple(sizes), tuple(ratios))(images, features)[0]


def _boxes(g: torch.Generator, n: int, size: float = 512.0) -> Tensor:
    """``n`` xyxy boxes with sides 10-110 px in a ``size`` image: dense enough that NMS suppresses."""
    wh = torch.rand(n, 2, generator=g) * 100 + 10
    xy = torch.rand(n, 2, generator=g) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


def _nms_inputs(n: int) -> Callable[[torch.Generator], tuple]:
    return lambda g: (_boxes(g, n), torch.rand(n, generator=g), 0.5)


def _batched_nms_inputs(g: torch.Generator) -> tuple:
    # 1k boxes of 5 classes. (Above 4k boxes torchvision sorts its result with an unstable sort, so
    # the order of equal scores may differ there; the kept set does not.)
    return _boxes(g, 1000), torch.rand(1000, generator=g), torch.randint(0, 5, (1000,), generator=g), 0.5


def _random_detections(num_images: int, per_image: int, num_classes: int, seed: int, image_size: int = 256):
    """Random GT boxes and noisy, partly shuffled detections (sizes from 4 to ~250 px: all area ranges)."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(num_images):
        n_gt = int(torch.randint(0, per_image + 1, (1,), generator=g))
        wh = torch.exp(torch.empty(n_gt, 2).uniform_(math.log(4), math.log(image_size), generator=g))
        xy = torch.rand(n_gt, 2, generator=g) * (image_size - wh)
        gt_boxes = torch.cat([xy, xy + wh], 1)
        gt_labels = torch.randint(1, num_classes + 1, (n_gt,), generator=g)
        src = torch.randint(0, max(n_gt, 1), (per_image,), generator=g)
        base = gt_boxes[src] if n_gt else torch.tensor([[0.0, 0.0, 50.0, 50.0]]).expand(per_image, 4)
        size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
        boxes = base + torch.randn(per_image, 4, generator=g) * size * 0.15
        boxes = torch.cat([boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], 1)
        labels = gt_labels[src] if n_gt else torch.randint(1, num_classes + 1, (per_image,), generator=g)
        flip = torch.rand(per_image, generator=g) < 0.2  # some wrong classes
        labels = torch.where(flip, torch.randint(1, num_classes + 1, (per_image,), generator=g), labels)
        preds.append({"boxes": boxes, "scores": torch.rand(per_image, generator=g), "labels": labels})
        targets.append({"boxes": gt_boxes, "labels": gt_labels})
    return preds, targets


def _detections(g: torch.Generator, num_images: int, masks: bool, size: int = 256) -> tuple:
    """Random ground truth and noisy detections in ``size`` px images (all COCO size ranges); ``masks``:
    boxes filled in, ``[N, size, size]`` each."""
    preds, targets = _random_detections(num_images, 20, 5, int(torch.randint(0, 2**31, (1,), generator=g)), size)
    if masks:
        for entry in preds + targets:
            entry["masks"] = _fill_boxes(entry.pop("boxes"), size)
    return preds, targets, "segm" if masks else "bbox"


def _fill_boxes(boxes: Tensor, size: int) -> Tensor:
    """bool Tensor[N, size, size]: each box's pixels (pixel centres inside the box)."""
    centres = torch.arange(size) + 0.5
    inside_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] < boxes[:, 2:3])  # (N, size)
    inside_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


_STATS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
          "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]  # pycocotools' order


def _our_map_stats(preds, targets, iou_type) -> Tensor:
    from coursekit.metrics import mean_average_precision

    result = mean_average_precision(preds, targets, iou_type=iou_type)
    return torch.tensor([float(result[k]) for k in _STATS])


def _coco_map_stats(preds, targets, iou_type) -> Tensor:
    from coursekit.metrics.detection import pycocotools_map

    return torch.tensor(pycocotools_map(preds, targets, iou_type=iou_type).stats, dtype=torch.float32)


def _ssd_outputs(g: torch.Generator) -> tuple:
    # what an SSD head emits for 8 images of 96 px (notebook 05): 11 classes on its 2,016 anchors
    from coursekit.models.ssd import SSD

    anchors = SSD(10, 96).anchors
    cls_logits = torch.randn(8, len(anchors), 11, generator=g) * 3
    return cls_logits, torch.randn(8, len(anchors), 4, generator=g) * 0.5, anchors


def _flat(detections: list[dict[str, Tensor]]) -> Tensor:
    """One tensor of every image's (boxes, score, label) rows, for comparing two detectors' outputs."""
    return torch.cat([torch.cat([d["boxes"], d["scores"][:, None], d["labels"][:, None].float()], 1)
                      for d in detections])


def _our_ssd_decode(cls_logits, deltas, anchors) -> Tensor:
    from coursekit.detection import ssd_decode

    return _flat(ssd_decode(cls_logits, deltas, anchors, 96, score_threshold=0.05, topk_candidates=100,
                        max_detections=100))


def _torchvision_ssd_decode(cls_logits, deltas, anchors) -> Tensor:
    from types import SimpleNamespace

    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.ssd import SSD as TorchvisionSSD

    from coursekit.detection import SSD_BOX_WEIGHTS

    settings = SimpleNamespace(box_coder=det_utils.BoxCoder(SSD_BOX_WEIGHTS), score_thresh=0.05, topk_candidates=100,
                               nms_thresh=0.45, detections_per_img=100)
    return _flat(TorchvisionSSD.postprocess_detections(
        settings, {"cls_logits": cls_logits, "bbox_regression": deltas}, [anchors] * len(cls_logits),
        [(96, 96)] * len(cls_logits)))


def _register_course_ops() -> None:
    import torch.nn.functional as F
    import torchvision.ops as tvo

    from coursekit import anchors, boxes, losses, ops

    add_case("box_iou 1k x 1k", boxes.box_iou, tvo.box_iou, lambda g: (_boxes(g, 1000), _boxes(g, 1000)))
    add_case("generalized_box_iou 1k x 1k", boxes.generalized_box_iou, tvo.generalized_box_iou,
             lambda g: (_boxes(g, 1000), _boxes(g, 1000)))
    add_case("nms 1k boxes", boxes.nms, tvo.nms, _nms_inputs(1000))
    add_case("nms 10k boxes", boxes.nms, tvo.nms, _nms_inputs(10_000))
    add_case("batched_nms 1k boxes, 5 classes", boxes.batched_nms, tvo.batched_nms, _batched_nms_inputs)
    add_case("mAP boxes, 500 images (vs pycocotools)", _our_map_stats, _coco_map_stats,
             lambda g: _detections(g, 500, masks=False))
    add_case("mAP masks, 100 images 128 px (vs pycocotools)", _our_map_stats, _coco_map_stats,
             lambda g: _detections(g, 100, masks=True, size=128))
    add_case("mAP masks, 50 images 400 px, COCO-like (vs pycocotools)", _our_map_stats, _coco_map_stats,
             lambda g: _detections(g, 50, masks=True, size=400))
    add_case("roi_pool 256 RoIs [2,64,50,50] -> 7x7", ops.roi_pool, tvo.roi_pool, _roi_inputs)
    add_case("roi_align 256 RoIs [2,64,50,50] -> 7x7", ops.roi_align, tvo.roi_align, _roi_inputs)
    torch_conv_t = lambda x, w, stride, padding: F.conv_transpose2d(
        x, w, None, stride, padding
    )  # bias is 3rd
    add_case(
        "conv_transpose2d [8,32,32,32] k4 s2", ops.conv_transpose2d, torch_conv_t, _conv_transpose_inputs
    )
    add_case(
        "sigmoid_focal_loss 100k logits", losses.sigmoid_focal_loss, tvo.sigmoid_focal_loss, _focal_inputs
    )
    add_case(
        "anchors 3-level pyramid (56k)", anchors.generate_anchors, _torchvision_anchors, lambda g: _PYRAMID
    )
    add_case("SSD decode + NMS, 8 images x 2016 anchors", _our_ssd_decode, _torchvision_ssd_decode, _ssd_outputs)


_register_course_ops()
