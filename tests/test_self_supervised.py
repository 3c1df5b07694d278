"""coursekit.self_supervised: the MoCo loss against an obvious reference, the queue, pretraining, the probe."""

import pytest
import torch
import torch.nn.functional as F

from coursekit.self_supervised import (
    ContrastiveModel,
    MoCoQueue,
    finetune,
    linear_probe,
    moco_loss,
    pretrain,
    resnet18_encoder,
    small_convnet,
)


def test_moco_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(7, 5, generator=g)
    queue = F.normalize(queue, dim=1)
    tau = 0.1
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    terms = []
    for i in range(3):
        positive = torch.exp(qn[i] @ kn[i] / tau)
        terms.append(-torch.log(positive / (positive + torch.exp(queue @ qn[i] / tau).sum())))
    expected = torch.stack(terms).mean()
    assert torch.allclose(moco_loss(q, k, queue, tau), expected, atol=1e-5)


def test_queue_replaces_the_oldest_keys():
    queue = MoCoQueue(5, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))
    queue.push(torch.full((3, 2), 1.0))
    queue.push(torch.full((3, 2), 2.0))  # wraps around: slots 3, 4, 0
    assert queue.keys[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0] and queue.pointer == 1
    with pytest.raises(ValueError, match="does not fit"):
        queue.push(torch.zeros(6, 2))
    with pytest.raises(ValueError, match="queue size"):
        MoCoQueue(0, 2)


@pytest.mark.parametrize("method", ["simclr", "moco", "supervised"])
def test_pretraining_lowers_the_loss_and_changes_the_encoder(method):
    images = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 3 if method == "supervised" else None
    encoder = small_convnet(8)
    before = [p.clone() for p in encoder.parameters()]
    out = pretrain(encoder, images, method=method, steps=6, batch_size=8, queue_size=16, labels=labels, progress=False)
    assert len(out["loss"]) == 6 and all(torch.isfinite(torch.tensor(out["loss"])))
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert not encoder.training


def test_bad_input():
    images = torch.rand(8, 3, 16, 16)
    with pytest.raises(ValueError, match="method"):
        pretrain(small_convnet(4), images, method="byol")
    with pytest.raises(ValueError, match="batch_size"):
        pretrain(small_convnet(4), images, batch_size=9)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        pretrain(small_convnet(4), images[:, :1])
    with pytest.raises(ValueError, match="labels"):
        pretrain(small_convnet(4), images, method="supervised", batch_size=4)
    with pytest.raises(ValueError, match="labels"):
        pretrain(small_convnet(4), images, batch_size=4, labels=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="ResNet-18"):
        resnet18_encoder(torch.nn.Linear(2, 2))


def test_resnet_encoder_and_head_shapes():
    encoder = resnet18_encoder()
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert ContrastiveModel(encoder)(torch.rand(2, 3, 32, 32)).shape == (2, 128)


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = torch.rand(40, 3, 8, 8, generator=g) + labels.view(-1, 1, 1, 1) * 2.0  # class 1 is brighter
    identity = torch.nn.Sequential(torch.nn.Flatten())
    identity.register_parameter("dummy", torch.nn.Parameter(torch.zeros(1)))
    assert linear_probe(identity, (images[:20], labels[:20]), (images[20:], labels[20:])) == 1.0


def test_finetune_learns_an_easy_task_and_leaves_the_encoder_alone():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.rand(64, 3, 16, 16, generator=g) * 0.2 + labels.view(-1, 1, 1, 1) * 0.6  # dark vs bright
    encoder = small_convnet(4)
    before = [p.clone() for p in encoder.parameters()]
    acc = finetune(encoder, (images[:32], labels[:32]), (images[32:], labels[32:]), steps=30, batch_size=16, lr=1e-2)
    assert acc >= 0.9
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
