"""Every registered model (coursekit.models.registry): built from its tiny smoke configuration, one forward
and one backward pass on the CPU, output shapes as registered. A new model joins this test by registering."""

import pytest
import torch

from coursekit.models import create_model, list_models, model_entry


def _tensors(out) -> list[torch.Tensor]:
    """The output's tensors in order: a tensor, a tuple / list of them, or a dict (a detector's losses)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [t for item in out for t in _tensors(item)]


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_forward_and_backward(name):
    entry = model_entry(name)
    assert entry.smoke is not None, f"{name} registered without a Smoke spec"
    torch.manual_seed(0)
    model = create_model(name, **entry.smoke.kwargs).train(entry.smoke.train)
    outputs = _tensors(model(*entry.smoke.inputs(torch.Generator().manual_seed(0))))
    assert [tuple(t.shape) for t in outputs] == [tuple(s) for s in entry.smoke.shapes]
    assert all(torch.isfinite(t).all() for t in outputs)
    sum(t.float().mean() + t.float().square().mean() for t in outputs).backward()  # linear term: zero-init heads
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        create_model("unet3000", num_classes=3)
    assert "choose one of" in str(err.value) and all(name in str(err.value) for name in list_models())


def test_families_and_order():
    names = list_models()
    assert {"ssd", "yolo_v1", "unet", "stacked_hourglass", "dip_skipnet", "torchvision_mask_rcnn"} <= set(names)
    assert list_models("segmentation")[:3] == ["naive", "encoder_decoder", "fcn32s"]
