"""From-scratch versions of the ops the detection and segmentation notebooks use.

Each one has ``torchvision.ops`` / ``torch.nn.functional``'s signature and result (``tests/test_ops.py``
checks values and gradients): read them to see the idea, call torchvision's in real models.

- :func:`roi_pool` (notebook 04), :func:`roi_align` (notebook 07): fixed-size features per region;
  :func:`boxes_to_rois`, :func:`scaled_rois`: the RoI format both take.
- :func:`conv_transpose2d`, :func:`nearest_upsample`, :func:`bed_of_nails`, :func:`max_unpool2d`
  (notebook 06): upsampling in segmentation decoders.
"""

from coursekit.ops.conv_transpose import conv_transpose2d, conv_transpose2d_steps, conv_transpose_output_size
from coursekit.ops.roi_align import roi_align
from coursekit.ops.roi_pool import roi_pool
from coursekit.ops.rois import boxes_to_rois, scaled_rois
from coursekit.ops.upsample import bed_of_nails, checkerboard_demo, max_unpool2d, nearest_upsample

__all__ = [
    "roi_pool",
    "roi_align",
    "boxes_to_rois",
    "scaled_rois",
    "conv_transpose2d",
    "conv_transpose2d_steps",
    "conv_transpose_output_size",
    "nearest_upsample",
    "bed_of_nails",
    "max_unpool2d",
    "checkerboard_demo",
]
