"""coursekit.video: TV-L1 flow of a known shift, training, the time-direction metric, torchvision's video nets."""

import pytest
import torch

from coursekit import video
from coursekit.models.video import FrameAverage


def test_flow_of_a_shifted_blob_is_the_shift():
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    frames = [torch.exp(-((xs - 14 - 2 * t) ** 2 + (ys - 16) ** 2) / 20) for t in range(3)]  # moves 2 px right
    clip = torch.stack([f.expand(3, -1, -1) for f in frames])
    flow = video.optical_flow(clip, num_warp=5)
    assert flow.shape == (2, 2, 32, 32)
    centre = flow[0, :, 14:19, 14:19].mean((1, 2))
    assert abs(float(centre[0]) - 2.0) < 0.5 and abs(float(centre[1])) < 0.3
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        video.optical_flow(clip[:1])


def test_direction_accuracy():
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.tensor([[2.0, 1, 0, 0], [2.0, 1, 0, 0], [0, 0, 0, 5.0], [0, 0, 0, 5.0]])
    assert video.direction_accuracy(logits, labels, [(0, 1)]) == 0.5
    assert video.direction_accuracy(logits, labels, [(0, 1), (2, 3)]) == 0.5
    assert video.accuracy(logits, labels) == 0.5
    with pytest.raises(ValueError, match="no clip"):
        video.direction_accuracy(logits, labels, [(5, 6)])


def test_training_fits_a_tiny_problem():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 2
    clips = torch.rand(16, 4, 3, 32, 32, generator=g) * 0.2 + labels.view(-1, 1, 1, 1, 1) * 0.8
    model = FrameAverage(2, width=4)
    out = video.train_classifier(model, (clips,), labels, steps=30, batch_size=8, progress=False)
    assert len(out["loss"]) == 30
    assert video.accuracy(video.predict(model, (clips,)), labels) == 1.0
    with pytest.raises(ValueError, match="labels"):
        video.train_classifier(model, (clips,), labels[:3], steps=1)


def test_torchvision_video_model_offline(monkeypatch, capsys):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    monkeypatch.setattr("coursekit.weights.is_cached", lambda weights: False)
    model, source = video.torchvision_video_model("r3d_18", num_classes=8)
    assert source == "random" and model.fc.out_features == 8
    assert capsys.readouterr().out.count("\n") == 1  # one line says what it fell back to
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 4, 32, 32)).shape == (1, 8)
    with pytest.raises(ValueError, match="unknown"):
        video.torchvision_video_model("i3d")
