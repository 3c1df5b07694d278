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
