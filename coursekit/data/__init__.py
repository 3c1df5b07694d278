"""Data for the course: deterministic generated datasets, real pictures shipped in wheels, real-data loaders.

- Generated (no download, item ``i`` a pure function of ``(seed, i)``): :class:`Shapes` (shapes with boxes,
  instance and semantic masks), :class:`DigitScenes` (real handwritten digits at several scales),
  :class:`StickFigures` (articulated figures with 15 keypoints).
- Real, offline: :func:`sample_image` (photos), :func:`lfw_faces` (faces / non-faces), :func:`digits`.
- Generated for notebook 10: :class:`Identities` (glyph identities, disjoint train / test), :class:`Clips`
  (tracking clips with a box per frame); real: :func:`held_out_digits`, online :func:`omniglot`.
- Real, online: :func:`penn_fudan`, :func:`oxford_pet`, :func:`voc_detection`, :func:`voc_segmentation`;
  offline they raise :class:`OfflineError` naming the generated alternative.
- Between dataset and model: :func:`collate` (detection batches), :func:`hflip` and
  :class:`RandomHorizontalFlip`; :class:`SegmentationSet` (rendered ``(image, mask)`` pairs),
  :class:`HeatmapDataset` (keypoints -> heatmap targets), :class:`CocoKeypoints` (real people, never downloaded).
- Targets and detections: the TypedDicts :class:`Target` and :class:`Detection` (:mod:`coursekit.data.targets`).

Pixel convention: pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``; boxes are float xyxy with
``x2 = last column + 1``; keypoints are (x, y) in the same continuous coordinates.
"""

from coursekit.data.actions import ACTIONS, REVERSE_PAIRS, ActionClips
from coursekit.data.augment import SimCLRAugment, two_views
from coursekit.data.clips import Clips
from coursekit.data.digits import DIGIT_SPLITS, DigitScenes
from coursekit.data.identities import Identities, held_out_digits
from coursekit.data.keypoints import CocoKeypoints, HeatmapDataset
from coursekit.data.real import (
    IGNORE_INDEX,
    VOC_CLASSES,
    OfflineError,
    PennFudan,
    omniglot,
    oxford_pet,
    penn_fudan,
    voc_detection,
    voc_segmentation,
)
from coursekit.data.samples import SAMPLE_IMAGES, digits, lfw_faces, sample_image
from coursekit.data.segmentation import SegmentationSet
from coursekit.data.shapes import SHAPE_KINDS, Shapes, single_shapes
from coursekit.data.stick_figures import FLIP_PAIRS, KEYPOINTS, SKELETON, StickFigures
from coursekit.data.targets import Detection, Target
from coursekit.data.transforms import RandomHorizontalFlip, collate, hflip

__all__ = [
    "Shapes",
    "SHAPE_KINDS",
    "single_shapes",
    "DigitScenes",
    "DIGIT_SPLITS",
    "StickFigures",
    "KEYPOINTS",
    "SKELETON",
    "FLIP_PAIRS",
    "sample_image",
    "SAMPLE_IMAGES",
    "lfw_faces",
    "digits",
    "OfflineError",
    "PennFudan",
    "penn_fudan",
    "oxford_pet",
    "voc_detection",
    "voc_segmentation",
    "omniglot",
    "Identities",
    "held_out_digits",
    "Clips",
    "ActionClips",
    "ACTIONS",
    "REVERSE_PAIRS",
    "SimCLRAugment",
    "two_views",
    "VOC_CLASSES",
    "IGNORE_INDEX",
    "collate",
    "hflip",
    "RandomHorizontalFlip",
    "SegmentationSet",
    "HeatmapDataset",
    "CocoKeypoints",
    "Target",
    "Detection",
]
