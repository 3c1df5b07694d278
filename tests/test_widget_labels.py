"""Slider labels are readable and whole: ipywidgets cuts a default label at ~10 characters."""

from coursekit.widgets import image_picker, readable_label, slider_plot


def test_labels_are_words_with_room_to_show():
    assert readable_label("score_threshold") == "score threshold"
    assert readable_label("iou_threshold") == "IoU threshold"
    assert readable_label("image_index") == "image index"
    widget = slider_plot(lambda ax, image_index, iou_threshold, joint: None, image_index=(0, 7, 1, 0),
                         iou_threshold=(0.05, 1.0, 0.05, 0.45), joint={"head": 0, "left hand": 1})
    for name, control in widget.controls.items():
        assert control.description == readable_label(name)
        assert control.style.description_width == "initial"  # the label's own width, never cut
        assert int(control.layout.width.removesuffix("px")) >= 300
    assert widget.values == {"image_index": 0, "iou_threshold": 0.45, "joint": 0}  # names unchanged
    picker = image_picker({"a": [[0.0]]})
    assert picker.controls["image"].style.description_width == "initial"
