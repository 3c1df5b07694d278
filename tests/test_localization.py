"""coursekit.localization: the two-headed net, its multitask loss and its evaluation."""

import pytest
import torch

from coursekit import localization as loc
from coursekit.data import Shapes
from coursekit.models.localization import LocalizationNet


def test_shapes_of_both_heads():
    x = torch.rand(2, 3, 48, 48)
    logits, boxes = LocalizationNet(6, image_size=48)(x)
    assert logits.shape == (2, 6) and boxes.shape == (2, 4)
    assert ((boxes > 0) & (boxes < 1)).all()
    logits, boxes = LocalizationNet(6, class_specific=True, image_size=48)(x)
    assert boxes.shape == (2, 6, 4)
    with pytest.raises(ValueError, match="multiple of 16"):
        LocalizationNet(6, image_size=50)


def test_class_specific_box_of_the_given_class_is_picked():
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    picked = LocalizationNet.pick_boxes(boxes, torch.tensor([2, 0]))
    assert torch.equal(picked, torch.stack([boxes[0, 2], boxes[1, 0]]))


def test_multitask_loss_weights_the_box_term():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    gt = torch.rand(4, 4)
    pred = gt + 0.1
    for kind in loc.BOX_LOSSES:
        zero = loc.localization_loss(logits, gt, labels, gt, box_weight=5.0, box_loss=kind)
        assert zero["loss_box"].item() == pytest.approx(0.0, abs=1e-7)
        out = loc.localization_loss(logits, pred, labels, gt, box_weight=5.0, box_loss=kind)
        assert out["loss"].item() == pytest.approx(out["loss_cls"].item() + 5.0 * out["loss_box"].item(), rel=1e-5)
    l1 = loc.localization_loss(logits, pred, labels, gt, box_loss="l1")["loss_box"]
    assert l1.item() == pytest.approx(0.4, rel=1e-5)  # 4 coordinates x 0.1
    with pytest.raises(ValueError, match="box_loss"):
        loc.localization_loss(logits, pred, labels, gt, box_loss="l3")


def test_single_object_tensors_and_evaluation_with_perfect_boxes():
    data = loc.single_object_tensors(Shapes(6, 32, min_objects=1, max_objects=1, seed=3))
    images, labels, boxes = data.tensors
    assert images.shape == (6, 3, 32, 32) and labels.min() >= 0 and ((boxes >= 0) & (boxes <= 1)).all()
    with pytest.raises(ValueError, match="min_objects=max_objects=1"):
        loc.single_object_tensors(Shapes(4, 64, min_objects=2, max_objects=2, seed=0))

    class Oracle(torch.nn.Module):
        def forward(self, x):
            idx = [int((images == xi).flatten(1).all(1).nonzero()[0]) for xi in x]
            return torch.nn.functional.one_hot(labels[idx], 6).float(), boxes[idx]

    result = loc.evaluate(Oracle(), data)
    assert result["acc"] == 1.0 and result["mean_iou"] == pytest.approx(1.0) and result["both"] == 1.0


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    data = loc.single_object_tensors(Shapes(32, 32, min_objects=1, max_objects=1, seed=1))
    model = LocalizationNet(6, image_size=32, width=8)
    step = loc.make_step(box_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = data.tensors
    first = step(model, batch, "cpu")["loss"].item()
    for _ in range(25):
        loss = step(model, batch, "cpu")["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert step(model, batch, "cpu")["loss"].item() < 0.7 * first


def test_two_phase_recipe_leaves_frozen_layers_exactly_as_they_were():
    """Deck 001's phase 2 trains only the regressor: Trainer's model.train() must not let the frozen
    conv layers' BatchNorm statistics drift (the classifier would change without a gradient)."""
    from torch.utils.data import DataLoader, TensorDataset

    from coursekit.train import Trainer, freeze

    torch.manual_seed(0)
    net = LocalizationNet(num_classes=3, image_size=32)
    freeze(net.features)
    freeze(net.classifier)
    frozen = {k: v.clone() for k, v in net.features.state_dict().items()}
    data = TensorDataset(torch.rand(8, 3, 32, 32), torch.randint(0, 3, (8,)), torch.rand(8, 4))
    optimizer = torch.optim.Adam(net.regressor.parameters(), lr=1e-2)
    regressor_before = net.regressor[1].weight.clone()
    Trainer(net, optimizer, step=loc.make_step(1.0)).fit(DataLoader(data, batch_size=4), epochs=1, progress=False)
    assert all(torch.equal(v, net.features.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(regressor_before, net.regressor[1].weight)
