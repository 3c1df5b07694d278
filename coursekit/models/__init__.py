"""The course's networks, one file per family; import the file you need (``from coursekit.models import ssd``).

==================  ==============================================================  ========
module              what it holds                                                   notebook
==================  ==============================================================  ========
``overfeat``        window classifier + box regressor, made fully convolutional     03
``rcnn``            R-CNN, Fast R-CNN, Faster R-CNN with a from-scratch RPN         04
``yolo``            YOLO v1: an S x S grid, B boxes per cell                        05
``ssd``             SSD: default boxes on several feature maps                      05
``segmentation``    naive all-conv, FCN-32s/16s/8s, U-Net, SegNet, DeepLab          06
``mask_rcnn``       torchvision's Mask R-CNN for small images, RoI-pool experiments 07
``hourglass``       stacked hourglass with intermediate supervision                 08
``dip``             the Deep Image Prior encoder-decoder                            09
==================  ==============================================================  ========
"""

from coursekit.models import dip, hourglass, mask_rcnn, overfeat, rcnn, segmentation, ssd, yolo

__all__ = ["dip", "hourglass", "mask_rcnn", "overfeat", "rcnn", "segmentation", "ssd", "yolo"]
