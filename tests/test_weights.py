"""coursekit.weights: offline detection, the home-made pretrained backbone and its loading."""

import time

import pytest
import torch
import torchvision

from coursekit import weights
from coursekit.data.shapes import single_shapes


def test_offline_is_detected_at_once(monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    start = time.perf_counter()
    assert weights.is_online() is False
    assert time.perf_counter() - start < 0.1


def test_pretraining_is_deterministic():
    a = weights.pretrain_resnet18(steps=2, batch_size=4, image_size=32, progress=False)
    b = weights.pretrain_resnet18(steps=2, batch_size=4, image_size=32, progress=False)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = torchvision.models.resnet18(weights=None, num_classes=6).state_dict()
    assert not torch.equal(a["conv1.weight"], fresh["conv1.weight"])


def test_offline_backbone_prints_one_line_and_is_cached(capsys, monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    model, source = weights.resnet18_backbone()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("coursekit: offline")]
    assert source == "coursekit-shapes"
    assert len(lines) == 1 and "instead of ImageNet" in lines[0]
    path = weights._checkpoint_path()
    assert path.is_file()
    state = torch.load(path, weights_only=True)  # plain tensors only
    assert torch.equal(state["conv1.weight"], model.conv1.weight)
    assert isinstance(model, torchvision.models.ResNet) and model.fc.out_features == 6


@torch.no_grad()
def test_offline_backbone_learned_its_source_task(monkeypatch):
    """Held-out images of the source task: the cached backbone names the shape far above chance (1/6)."""
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    model, _ = weights.resnet18_backbone(verbose=False)
    model.eval()
    images, labels = weights._source_batch(single_shapes(256, seed=12345), 0, 256)
    accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.6, accuracy  # measured 0.83


def test_load_backbone_weights_into_smp_encoder_and_detection_body(monkeypatch):
    import segmentation_models_pytorch as smp
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    unet = smp.Unet("resnet18", encoder_weights=None, classes=3)
    assert weights.load_backbone_weights(unet.encoder, verbose=False) == "coursekit-shapes"
    reference, _ = weights.resnet18_backbone(verbose=False)
    assert torch.equal(unet.encoder.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    body = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5).body
    weights.load_backbone_weights(body, verbose=False)
    assert torch.equal(body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_load_backbone_weights_rejects_other_architectures():
    with pytest.raises(ValueError, match="not a ResNet-18"):
        weights.load_backbone_weights(torchvision.models.resnet34(weights=None), verbose=False)


def test_smp_encoder_weights_offline(capsys, monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    assert weights.smp_encoder_weights() is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("coursekit: offline")


def test_pretraining_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    weights.pretrain_resnet18(steps=1, batch_size=2, image_size=32, progress=False)
    assert torch.equal(torch.rand(3), expected)  # no reseeding: a notebook's draws do not depend on the cache
