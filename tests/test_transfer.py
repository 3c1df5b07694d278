"""coursekit.transfer: regimes freeze what they say, frozen BatchNorm stays put, tasks are honest."""

import pytest
import torch
import torchvision

from coursekit import transfer


@pytest.mark.parametrize("regime", transfer.REGIMES)
def test_prepare_trains_exactly_the_regime_blocks(regime):
    model = transfer.prepare(torchvision.models.resnet18(weights=None), regime, num_classes=7)
    assert model.fc.out_features == 7
    trained = {name for name, _, trainable in transfer.block_summary(model) if trainable}
    assert trained == set(transfer._TRAINABLE[regime])
    if regime == "linear_probe":
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 512 * 7 + 7


def test_reinit_top_changes_layer4_only():
    model = torchvision.models.resnet18(weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    transfer.prepare(model, "reinit_top", num_classes=3)
    after = model.state_dict()
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    assert torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])


def test_frozen_batchnorm_statistics_do_not_move():
    model = transfer.prepare(torchvision.models.resnet18(weights=None), "linear_probe", num_classes=2)
    before = model.layer1[0].bn1.running_mean.clone()
    model.train()
    transfer.frozen_to_eval(model)
    model(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert torch.equal(model.layer1[0].bn1.running_mean, before)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown regime"):
        transfer.prepare(torchvision.models.resnet18(weights=None), "finetune_some", 2)
    with pytest.raises(ValueError, match="unknown task"):
        transfer.target_task("cats", 2)
    with pytest.raises(ValueError, match="n_per_class"):
        transfer.target_task("digits", 0)


@pytest.mark.parametrize("task", transfer.TASKS)
def test_target_tasks_are_balanced_normalised_and_split(task):
    train = transfer.target_task(task, 3, image_size=32, split="train")
    test = transfer.target_task(task, 3, image_size=32, split="test")
    images, labels = train.tensors
    assert images.shape[1:] == (3, 32, 32)
    counts = torch.bincount(labels)
    assert (counts == 3).all() and len(counts) == (6 if task == "shapes" else 10)
    assert images.mean().abs() < 2  # ImageNet-normalised, not raw [0, 1] or [0, 255]
    # no training image appears in the test split
    flat_train, flat_test = images.flatten(1), test.tensors[0].flatten(1)
    assert torch.cdist(flat_train, flat_test).min() > 1e-3


def test_run_regime_learns_a_small_task():
    torch.manual_seed(0)
    train = transfer.target_task("digits", 10, image_size=32, split="train")
    test = transfer.target_task("digits", 10, image_size=32, split="test")
    out = transfer.run_regime(torchvision.models.resnet18(weights=None), "scratch", train, test,
                              steps=60, batch_size=32, lr=1e-3)
    # 100 images, 60 steps: it fits the training set (measured 0.87 and 0.90 for seeds 0 and 1; at 30 steps
    # the same test gave 0.47 with torch 2.14: too close to the bar to say anything)
    assert out["train_acc"] > 0.5
    assert set(out) == {"test_acc", "train_acc", "trainable", "seconds"}


@pytest.mark.parametrize("regime", ["linear_probe", "finetune_top", "finetune_all"])
def test_regimes_freeze_what_timms_freeze_freezes_and_compute_the_same(regime):
    """Production counterpart: timm's ResNet-18 (same parameter names) with ``reset_classifier`` and
    ``timm.utils.freeze`` (frozen BatchNorm -> FrozenBatchNorm2d) trains the same parameters and, in train
    mode, computes the same outputs and gradients as our regime with ``frozen_to_eval``."""
    timm = pytest.importorskip("timm")
    from timm.utils.model import freeze

    from coursekit.train import frozen_to_eval

    torch.manual_seed(0)
    ours = torchvision.models.resnet18(weights=None)
    for m in ours.modules():  # pretrained-like BatchNorm statistics, so that "frozen" matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    theirs = timm.create_model("resnet18", pretrained=False)
    theirs.load_state_dict(ours.state_dict())
    transfer.prepare(ours, regime, num_classes=5)
    theirs.reset_classifier(5)
    theirs.fc.load_state_dict(ours.fc.state_dict())  # the same fresh head in both
    frozen = [b for b in transfer.BLOCKS if b not in transfer._TRAINABLE[regime]]
    if frozen:
        freeze(theirs, frozen)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in theirs.named_parameters() if p.requires_grad}
    x = torch.rand(4, 3, 32, 32)
    out_ours, out_theirs = frozen_to_eval(ours.train())(x), theirs.train()(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-3, atol=1e-4)  # FrozenBatchNorm2d rounds differently
    out_ours.sum().backward()
    out_theirs.sum().backward()
    grad = ours.fc.weight.grad  # the features the head sees, summed over the batch
    torch.testing.assert_close(grad, theirs.fc.weight.grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item())
