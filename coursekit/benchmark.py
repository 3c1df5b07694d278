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

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["benchmark", "Case", "Row", "CASES", "add_case", "ops_table", "format_table"]


def _synchronize(args: tuple) -> None:
    # CUDA runs asynchronously: wait for the queued kernels, or we would time only the launch
    if any(isinstance(a, Tensor) and a.is_cuda for a in args):
        torch.cuda.synchronize()


def benchmark(fn: Callable, *args, repeats: int = 20, warmup: int = 2, **kwargs) -> float:
    """Median wall-clock seconds of ``fn(*args, **kwargs)`` over ``repeats`` calls, after ``warmup`` calls.

    The median, not the mean, so one call slowed down by another process does not move the result.
    Runs under ``torch.no_grad()``: this times inference.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _synchronize(args)
            start = time.perf_counter()
            fn(*args, **kwargs)
            _synchronize(args)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def ops_table(cases: list[Case] | None = None, repeats: int = 10, seed: int = 0) -> list[Row]:
    """Time every case (default: :data:`CASES`), ours against the reference, on the same seeded inputs."""
    rows = []
    for case in CASES if cases is None else cases:
        args = case.make_inputs(torch.Generator().manual_seed(seed))
        ours = benchmark(case.ours, *args, repeats=repeats) * 1e3
        ref = benchmark(case.reference, *args, repeats=repeats) * 1e3
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


def _register_course_ops() -> None:
    import torch.nn.functional as F
    import torchvision.ops as tvo

    from coursekit import anchors, losses, ops

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


_register_course_ops()
