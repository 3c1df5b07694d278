"""The course's networks, one file per family, and one registry: ``create_model(name, ...)``, ``list_models()``.

==================  ==============================================================  ========
module              what it holds                                                   notebook
==================  ==============================================================  ========
``localization``    classification + localization: one CNN, two heads               02
``overfeat``        window classifier + box regressor, made fully convolutional     03
``rcnn``            R-CNN, Fast R-CNN, Faster R-CNN with a from-scratch RPN         04
``yolo``            YOLO v1 (an S x S grid, B boxes per cell); YOLOv2 (anchor priors)  05
``ssd``             SSD: default boxes on several feature maps                      05
``segmentation``    naive all-conv, FCN-32s/16s/8s, U-Net, SegNet, DeepLab          06
``torchvision_detection``  torchvision's Faster / Mask R-CNN built offline, small    04, 07
``mask_rcnn``       FPN's multi-scale RoI pooler written out, and its swap          07
``hourglass``       stacked hourglass with intermediate supervision                 08
``dip``             the Deep Image Prior encoder-decoder                            09
``siamese``         embedding net (retrieval), SiamFC (tracking)                    10
``video``           frame average, RNN over frames, C3D, two-stream (RGB + flow)     11
``blocks``          conv-BN-activation, the TinyDarknet body, input checks          02-09
``registry``        ``register_model`` / ``create_model`` / ``list_models``           all
==================  ==============================================================  ========

Every network registers itself with a tiny smoke configuration (:class:`~coursekit.models.registry.Smoke`);
``tests/test_models.py`` builds, runs forward and backward, and checks the shapes of every one of them.

Networks only: the task code around them (training steps, decoding, evaluation) lives in one module per
task, ``coursekit/<task>.py`` (``detection``, ``instance_segmentation``, ``segmentation``, ``pose``, ``dip``,
``retrieval``, ``tracking``).
"""

from coursekit.models import (
    blocks,
    dip,
    hourglass,
    localization,
    mask_rcnn,
    overfeat,
    rcnn,
    registry,
    segmentation,
    siamese,
    ssd,
    torchvision_detection,
    video,
    yolo,
)
from coursekit.models.registry import Smoke, create_model, list_models, model_entry, register_model

__all__ = [
    "create_model", "list_models", "register_model", "model_entry", "Smoke",
    "blocks", "dip", "hourglass", "localization", "mask_rcnn", "overfeat", "rcnn", "registry", "segmentation",
    "siamese", "ssd", "torchvision_detection", "video", "yolo",
]
