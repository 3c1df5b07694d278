"""Self-supervised pretraining: SimCLR (negatives from the batch) and MoCo (negatives from a queue).

Taught in notebook 11 (deck 003, "pretraining without human labels"). The proxy task: two augmented
views of one image (:func:`coursekit.data.augment.two_views`) must be closer to each other than to any
other image's views, scored by :func:`coursekit.losses.nt_xent_loss` with temperature tau. No label is
used; the quality of what the encoder learned is measured afterwards with labels, by a **linear probe**
(a logistic regression on frozen features, :func:`linear_probe`) and by fine-tuning on a few labels.

- SimCLR (Chen et al., 2020): negatives are the other 2N - 2 views of the batch; more negatives need a
  bigger batch.
- MoCo (He et al., 2019): negatives are the keys of the last K images, kept in a queue; keys come from
  a momentum encoder (an exponential moving average of the query encoder) so that old keys stay
  comparable. K is decoupled from the batch size.
- BYOL (Grill et al., 2020) needs no negatives at all: a predictor and the momentum target stop the
  collapse (pointer only).
- The baseline, ``method="supervised"``: the same encoder, batches, views and optimiser, with the labels
  and a cross-entropy loss instead; so "self-supervised vs supervised at the same budget" compares losses only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet, resnet18

from coursekit.data.augment import SimCLRAugment, two_views
from coursekit.losses import nt_xent_loss
from coursekit.train import eval_mode
from coursekit.weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Method",
    "METHODS",
    "resnet18_encoder",
    "small_convnet",
    "ContrastiveModel",
    "MoCoQueue",
    "moco_loss",
    "pretrain",
    "extract_features",
    "linear_probe",
    "finetune",
]

Method = Literal["simclr", "moco", "supervised"]
METHODS: tuple[str, ...] = get_args(Method)


def _normalise(images: Tensor) -> Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def resnet18_encoder(model: ResNet | None = None) -> ResNet:
    """A ResNet-18 whose ``fc`` is the identity: images ``[B, 3, H, W]`` (ImageNet-normalised) -> ``[B, 512]``.

    ``model``: a torchvision ResNet-18 with the weights to start from (e.g. coursekit's supervised
    backbone); ``None``: random initialisation. The model is modified in place.
    """
    model = model if model is not None else resnet18(weights=None)
    if not isinstance(model, ResNet) or model.fc.in_features != 512:
        raise ValueError("model must be a torchvision ResNet-18 (or None for a random one)")
    model.fc = nn.Identity()
    return model


def small_convnet(width: int = 32) -> nn.Sequential:
    """Four conv-BN-ReLU-pool blocks and a global average: ``[B, 3, H, W] -> [B, 8 * width]``.

    ~20x cheaper than ResNet-18 at 32 px: what the notebook's sweeps over tau and batch size use.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in (width, 2 * width, 4 * width, 8 * width):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _feature_dim(encoder: nn.Module, image_size: int = 32) -> int:
    with eval_mode(encoder), torch.no_grad():
        dim = encoder(torch.zeros(2, 3, image_size, image_size, device=next(encoder.parameters()).device)).shape[1]
    return int(dim)


class ContrastiveModel(nn.Module):
    """Encoder + projection head (SimCLR's g(.)): ``images -> z [B, out_dim]``; the loss is computed on z.

    SimCLR found the features *before* the head (``encoder(x)``) transfer better than z: the head can
    throw away what the augmentations vary (colour, position), which other tasks may need.
    """

    def __init__(self, encoder: nn.Module, hidden: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        dim = _feature_dim(encoder)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images))  # (B, out_dim)


class MoCoQueue:
    """MoCo's dictionary: the keys (``Tensor[K, D]``, L2-normalised) of the last K images, oldest replaced first."""

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> None:
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device)  # as MoCo: random start
        self.pointer = 0

    def push(self, keys: Tensor) -> None:
        """Enqueue a batch of keys ``[B, D]`` (B <= K), dequeuing the oldest."""
        K, B = len(self.keys), len(keys)
        if B > K:
            raise ValueError(f"a batch of {B} keys does not fit a queue of {K}; make the queue larger")
        index = (self.pointer + torch.arange(B)) % K
        self.keys[index.to(self.keys.device)] = keys.detach()
        self.pointer = int((self.pointer + B) % K)


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, tau: float = 0.2) -> Tensor:
    """InfoNCE with negatives from a queue (MoCo). -> scalar.

    Args:
        q (Tensor[B, D]): queries (first view, query encoder).
        k (Tensor[B, D]): keys (second view, momentum encoder, no gradient); row i is q's positive.
        queue (Tensor[K, D]): keys of earlier batches, the negatives.
        tau: temperature.
    Cross-entropy over ``[q.k, q.queue]`` / tau with the positive at index 0.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positive = (q * k).sum(1, keepdim=True)  # (B, 1)
    negatives = q @ queue.T  # (B, K)
    logits = torch.cat([positive, negatives], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def _batches(n: int, steps: int, batch_size: int, generator: torch.Generator):
    """``steps`` batches of ``batch_size`` indices into ``n`` items, a fresh order each epoch."""
    order = torch.randperm(n, generator=generator)
    position = 0
    for _ in range(steps):
        if position + batch_size > n:
            order, position = torch.randperm(n, generator=generator), 0
        yield order[position : position + batch_size]
        position += batch_size


def pretrain(
    encoder: nn.Module,
    images: Tensor,
    *,
    method: Method = "simclr",
    steps: int = 100,
    batch_size: int = 64,
    tau: float = 0.2,
    lr: float = 2e-3,
    queue_size: int = 1024,
    momentum: float = 0.99,
    augment: SimCLRAugment | None = None,
    labels: Tensor | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> dict[str, list[float] | float]:
    """Contrastive pretraining of ``encoder`` (modified in place) on unlabelled ``images``.

    Args:
        encoder: images ``[B, 3, H, W]`` (ImageNet-normalised) -> features ``[B, D]``
            (:func:`resnet18_encoder`, :func:`small_convnet`).
        images (Tensor[N, 3, H, W]): unlabelled images in [0, 1]; ``batch_size <= N``.
        method: ``"simclr"`` (batch negatives, :func:`~coursekit.losses.nt_xent_loss`), ``"moco"``
            (a momentum key encoder and a queue of ``queue_size`` negatives, :func:`moco_loss`), or the
            baseline ``"supervised"``: cross-entropy of a linear head on one view, with ``labels`` (Tensor[N] int).
        steps, batch_size: optimiser steps and images per step (each image gives two views).
        tau: temperature. lr: AdamW learning rate, one-cycle schedule.
        momentum: MoCo's key-encoder EMA.
        callback: ``callback(step, loss)`` after every step (live plots).

    Returns ``{"loss": [per step], "seconds": float}``.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if not 2 <= batch_size <= len(images):
        raise ValueError(f"batch_size must be between 2 and the number of images ({len(images)}), got {batch_size}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if (method == "supervised") != (labels is not None) or (labels is not None and len(labels) != len(images)):
        raise ValueError("labels (Tensor[N], one per image) are needed by method='supervised' and only by it")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    augment = augment or SimCLRAugment(generator=generator)
    if method == "supervised":
        model = nn.Sequential(encoder, nn.Linear(_feature_dim(encoder), int(labels.max()) + 1)).to(device).train()
    else:
        model = ContrastiveModel(encoder).to(device).train()
    key_model = queue = None
    if method == "moco":
        key_model = copy.deepcopy(model).requires_grad_(False)
        queue = MoCoQueue(queue_size, model.head[-1].out_features, device, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(_batches(len(images), steps, batch_size, generator), total=steps, desc=f"{method} pretraining",
               disable=not progress)
    for step, index in enumerate(bar):
        if method == "supervised":  # one view and its label
            view = _normalise(augment(images[index]).to(device))
            loss = F.cross_entropy(model(view), labels[index].to(device))
        elif method == "simclr":
            v1, v2 = (_normalise(v.to(device)) for v in two_views(images[index], augment))
            loss = nt_xent_loss(model(v1), model(v2), tau)
        else:
            v1, v2 = (_normalise(v.to(device)) for v in two_views(images[index], augment))
            with torch.no_grad():
                for p_k, p_q in zip(key_model.parameters(), model.parameters(), strict=True):
                    p_k.mul_(momentum).add_(p_q.detach(), alpha=1 - momentum)
                key_model.train()  # BatchNorm in train mode, as the query encoder (MoCo shuffles BN; we do not)
                k = F.normalize(key_model(v2), dim=1)
            loss = moco_loss(model(v1), k, queue.keys, tau)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if method == "moco":
            queue.push(k)  # after backward: the loss still needs the queue as it was
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, losses[-1])
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    encoder.eval()
    return {"loss": losses, "seconds": time.perf_counter() - start}


@torch.no_grad()
def extract_features(encoder: nn.Module, images: Tensor, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> Tensor:
    """Frozen features ``[N, D]`` (CPU) of ImageNet-normalised ``images [N, 3, H, W]``, encoder in eval mode."""
    encoder.eval().to(device)
    return torch.cat([encoder(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


def linear_probe(encoder: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                 device: torch.device | str = "cpu", C: float = 1.0) -> float:
    """Test accuracy of a logistic regression trained on the frozen features of ``encoder``.

    ``train`` / ``test``: ``(images [N, 3, H, W] ImageNet-normalised, labels [N])``, e.g. the tensors of
    :func:`coursekit.transfer.target_task`. Features are standardised with the training set's statistics;
    ``C`` is scikit-learn's inverse L2 strength. The standard measure of a self-supervised encoder.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train = extract_features(encoder, train[0], device).numpy()
    x_test = extract_features(encoder, test[0], device).numpy()
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(scaler.transform(x_train), np.asarray(train[1]))
    return float((clf.predict(scaler.transform(x_test)) == np.asarray(test[1])).mean())


def finetune(encoder: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], *, steps: int = 100,
             batch_size: int = 32, lr: float = 1e-3, device: torch.device | str = "cpu", seed: int = 0) -> float:
    """Test accuracy after fine-tuning a copy of ``encoder`` and a new linear head, every layer, on ``train``.

    ``train`` / ``test`` as for :func:`linear_probe`. AdamW, one-cycle schedule, ``steps`` random batches
    (a few labels per class: the "few-label fine-tune" score). ``encoder`` itself is left unchanged.
    """
    images, labels = train
    if steps < 1 or len(images) != len(labels):
        raise ValueError(f"need steps >= 1 and one label per image, got steps={steps}, {len(images)} images, "
                         f"{len(labels)} labels")
    generator = torch.Generator().manual_seed(seed)
    encoder = copy.deepcopy(encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(encoder, nn.Linear(_feature_dim(encoder), int(labels.max()) + 1)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
    for _ in range(steps):
        index = torch.randint(len(images), (min(batch_size, len(images)),), generator=generator)
        loss = F.cross_entropy(model(images[index].to(device)), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    logits = extract_features(model, test[0], device)
    return float((logits.argmax(1) == test[1]).float().mean())
