"""Evaluation metrics of the course, each written from scratch and tested against the trusted library.

- :mod:`~coursekit.metrics.detection`: COCO mAP for boxes and masks (= pycocotools), PASCAL VOC AP
  (notebooks 05, 07).
- :mod:`~coursekit.metrics.segmentation`: confusion matrix, per-class IoU, mean IoU (notebook 06).
- :mod:`~coursekit.metrics.pose`: PCK / PCKh and the PCK curve (notebook 08).
- :mod:`~coursekit.metrics.image`: PSNR (notebook 09).
- :mod:`~coursekit.metrics.retrieval`: recall@k and retrieval mAP on held-out identities (notebook 10).
- :mod:`~coursekit.metrics.tracking`: OTB success plot, AUC and precision (notebook 10).
"""

from coursekit.metrics.detection import (
    AREA_RANGES,
    CocoEvaluation,
    evaluate_detections,
    mask_iou,
    mean_average_precision,
    pycocotools_map,
    voc_ap,
)
from coursekit.metrics.image import psnr
from coursekit.metrics.pose import pck, pck_curve
from coursekit.metrics.retrieval import recall_at_k, retrieval_average_precision, retrieval_map
from coursekit.metrics.segmentation import confusion_matrix, iou_score, mean_iou
from coursekit.metrics.tracking import success_auc, success_curve

__all__ = [
    "mean_average_precision",
    "evaluate_detections",
    "CocoEvaluation",
    "AREA_RANGES",
    "voc_ap",
    "mask_iou",
    "pycocotools_map",
    "confusion_matrix",
    "iou_score",
    "mean_iou",
    "pck",
    "pck_curve",
    "psnr",
    "recall_at_k",
    "retrieval_map",
    "retrieval_average_precision",
    "success_curve",
    "success_auc",
]
