"""The course's networks, one file per family; import the file you need (``from coursekit.models import ssd``).

==================  ==============================================================  ========
module              what it holds                                                   notebook
==================  ==============================================================  ========
``overfeat``        window classifier + box regressor, made fully convolutional     03
``rcnn``            R-CNN, Fast R-CNN, Faster R-CNN with a from-scratch RPN         04
``yolo``            YOLO v1: an S x S grid, B boxes per cell                        05
``ssd``             SSD: default boxes on several feature maps                      05
``segmentation``    naive all-conv, FCN-32s/16s/8s, U-Net, SegNet, DeepLab          06
``mask_rcnn``       torchvision's Mask R-CNN for small images, RoI-pooler swap      07
``hourglass``       stacked hourglass with intermediate supervision                 08
``dip``             the Deep Image Prior encoder-decoder                            09
``siamese``         embedding net (retrieval), SiamFC (tracking)                    10
``blocks``          conv-BN-activation, the TinyDarknet body, input checks          05-09
==================  ==============================================================  ========

Networks only: the task code around them (training steps, decoding, evaluation) lives in one module per
task, ``coursekit/<task>.py`` (``detection``, ``instance_segmentation``, ``segmentation``, ``pose``, ``dip``,
``retrieval``, ``tracking``).
"""

from coursekit.models import blocks, dip, hourglass, mask_rcnn, overfeat, rcnn, segmentation, siamese, ssd, yolo

__all__ = ["blocks", "dip", "hourglass", "mask_rcnn", "overfeat", "rcnn", "segmentation", "siamese", "ssd", "yolo"]
