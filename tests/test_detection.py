"""coursekit.detection's helpers for any detector: predict (batched, eval mode, CPU outputs) and evaluate.
The SSD / YOLO task code is tested in test_ssd.py and test_yolo.py, the R-CNN step in test_rcnn.py."""

import pytest
import torch
from torch import nn

from coursekit import detection as D
from coursekit.models import create_model


class _Oracle(nn.Module):
    """A torchvision-style 'detector' that returns the ground truth of each image it is given."""

    def __init__(self, targets):
        super().__init__()
        self.targets, self.seen, self.modes = targets, 0, []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        self.modes.append(self.training)
        out = [{**self.targets[self.seen + i], "scores": torch.ones(len(self.targets[self.seen + i]["labels"]))}
               for i in range(len(images))]
        self.seen += len(images)
        return out


def _data(n=5):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 32, 32, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([1 + i % 2])} for i in range(n)]
    return images, targets


def test_predict_batches_in_eval_mode_and_restores_the_mode():
    images, targets = _data()
    model = _Oracle(targets).train()
    out = D.predict(model, images, device="cpu", batch_size=2)
    assert len(out) == 5 and model.modes == [False] * 3 and model.training
    assert all(o["boxes"].device.type == "cpu" for o in out)


def test_evaluate_scores_a_perfect_detector_one():
    images, targets = _data()
    result = D.evaluate(_Oracle(targets), list(zip(images, targets)), device="cpu", batch_size=2)
    assert result["map_50"] == pytest.approx(1.0) and len(result["predictions"]) == 5
    assert result["seconds_per_image"] >= 0
    with pytest.raises(ValueError, match="target"):
        D.evaluate(_Oracle(targets), images, device="cpu")


def test_predict_calls_detect_of_single_shot_detectors():
    ssd = create_model("ssd", num_classes=3, image_size=32, widths=(4, 8, 8, 8, 8))
    out = D.predict(ssd, torch.rand(3, 3, 32, 32), device="cpu", batch_size=2)
    assert len(out) == 3 and set(out[0]) == {"boxes", "scores", "labels"}
