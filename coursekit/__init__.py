"""coursekit: the support package of the deep-learning-for-computer-vision course.

Notebooks import it as ``import coursekit as ck``. Every concept lives in a module named after it;
the two helpers every notebook calls first are re-exported here, and the modules load on first use
(``ck.boxes.nms``, ``ck.metrics.mean_average_precision``, ...), so ``import coursekit`` stays fast.

==================  ==========================================================================
module              what it holds (the notebook that teaches it)
==================  ==========================================================================
``runtime``         ``device()``, ``seed_everything()``, ``is_offline()``, ``resolve_profile()``
``boxes``           box formats, IoU / GIoU, NMS, R-CNN box deltas (02-05)
``metrics``         COCO mAP (bbox, segm), VOC AP, IoU / mIoU, PCK, PSNR (02-09)
``data``            generated datasets (Shapes, DigitScenes, StickFigures), real sample images
``weights``         pretrained weights online, coursekit's own pretrained ResNet-18 offline (01)
``transfer``        transfer-learning regimes and target tasks (01)
``localization``    classification + localization as regression (02)
``sliding``         sliding windows (03)
``proposals``       region proposals: from-scratch Selective Search, proposal recall (04)
``detection``       detection task code: SSD / YOLO targets, losses, steps, decoding; predict, evaluate (04-05)
``instance_segmentation``  Mask R-CNN outputs -> box and mask AP; RoI pool vs align, controlled (07)
``segmentation``    segmentation data, joint augmentation, training step, boundary F, TTA (06)
``ops``             from-scratch RoI pool / RoI align / transposed convolution / unpooling (04-07)
``anchors``         anchor generation, matching, hard negative mining (04-05)
``losses``          focal loss, Dice / Jaccard, weighted cross-entropy (05-06)
``receptive_field`` receptive-field arithmetic, measured too (05)
``pose``            heatmap targets and decoding, keypoint augmentation (08)
``dip``             Deep Image Prior fitting loop and task losses (09)
``retrieval``       embeddings: P x K sampling, triplet mining, exact and faiss search (10)
``tracking``        SiamFC training pairs and tracker, template-matching baseline (10)
``models``          the course's networks, one file per family
``train``           ``Trainer`` / ``fit``: progress bar, callbacks, AMP, checkpoints
``model_cache``     ``ModelCache``: lecture-profile trainings saved once, loaded next time
``viz``, ``widgets``  drawing and ipywidgets
``grading``         assignment builder and autograder (``coursekit`` command)
==================  ==========================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

from coursekit.runtime import device, is_offline, resolve_profile, seed_everything

__version__ = "0.1.0"

_MODULES = (
    "anchors", "benchmark", "boxes", "course", "data", "detection", "dip", "grading", "instance_segmentation",
    "localization", "losses", "metrics",
    "model_cache", "models", "ops", "pose", "proposals", "receptive_field", "retrieval", "runtime", "segmentation",
    "self_supervised", "sliding", "tracking", "train", "transfer", "video", "viz", "weights", "widgets",
)

__all__ = ["device", "seed_everything", "is_offline", "resolve_profile", "ModelCache", "__version__", *_MODULES]


def __getattr__(name: str) -> Any:
    # Load a submodule on first use: `ck.metrics` works without importing everything up front.
    if name == "ModelCache":  # trained models cached for the lecture (coursekit.model_cache)
        return importlib.import_module("coursekit.model_cache").ModelCache
    if name in _MODULES:
        return importlib.import_module(f"coursekit.{name}")
    raise AttributeError(f"module 'coursekit' has no attribute {name!r}")
