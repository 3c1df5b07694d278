"""Image retrieval with embeddings: sampling identities, mining triplets, training, exact and approximate search.

Deck 003: "describe an image by a small vector (128, 256) and search nearest neighbours by L2";
pretrained features work, features *trained for the task* work better. The pieces, in notebook 10's order:

- :func:`pretrained_embedding`: the baseline, a pretrained backbone's pooled features;
- :class:`PKSampler`: batches of P identities x K images each, so every batch holds positives;
- :func:`random_pairs` (contrastive loss) and :func:`mine_triplets` (triplet loss): which pairs and
  triplets of a batch to train on: random, hard, semi-hard (FaceNet) or batch-hard (Hermans et al., 2017);
- :func:`metric_step`: the training step for :class:`coursekit.train.Trainer`;
- :func:`embed`, :func:`exact_search`, :func:`faiss_index`, :func:`index_recall`: search, exact by one
  matrix product or approximate with faiss (IVF, HNSW).

Losses: :func:`coursekit.losses.contrastive_loss`, :func:`coursekit.losses.triplet_loss`;
metrics: :mod:`coursekit.metrics.retrieval`. Assignment 07 writes the losses, batch-hard mining and recall@k.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler

from coursekit.losses import contrastive_loss, triplet_loss
from coursekit.metrics.retrieval import pairwise_distances
from coursekit.runtime import draw_device
from coursekit.train import eval_mode
from coursekit.weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Mining",
    "MINING",
    "pretrained_embedding",
    "embed",
    "PKSampler",
    "random_pairs",
    "mine_triplets",
    "metric_step",
    "exact_search",
    "faiss_index",
    "index_recall",
    "queries_per_second",
]

Mining = Literal["random", "hard", "semi-hard", "batch-hard"]
MINING: tuple[str, ...] = ("random", "hard", "semi-hard", "batch-hard")


# ------------------------------------------------------------------------------------ embeddings
class _PretrainedEmbedding(nn.Module):
    def __init__(self, backbone: nn.Module, size: int | None) -> None:
        super().__init__()
        self.backbone, self.size = backbone, size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return F.normalize(self.backbone((x - self.mean) / self.std), dim=1)


def pretrained_embedding(backbone: nn.Module, size: int | None = None) -> nn.Module:
    """A classifier turned into an embedding: ImageNet normalisation, optional resize to ``size``, the
    network with its last layer (``fc``) replaced by the identity, L2 normalisation.

    For a torchvision ResNet (e.g. :func:`coursekit.weights.resnet18_backbone`): ``Tensor[B, 3, H, W]``
    in [0, 1] -> ``Tensor[B, 512]``, the globally pooled features. The backbone is modified in place.
    """
    if not hasattr(backbone, "fc"):
        raise ValueError("pretrained_embedding expects a torchvision ResNet-like model with an `fc` layer")
    backbone.fc = nn.Identity()
    return _PretrainedEmbedding(backbone, size).eval()


@torch.no_grad()
def embed(model: nn.Module, images: Tensor, batch_size: int = 256, device: torch.device | str | None = None) -> Tensor:
    """Embeddings of ``images`` (Tensor[N, 3, H, W]) in eval mode, by batches -> Tensor[N, D] on the CPU.

    The model is put back in the mode it was in.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    with eval_mode(model):
        out = [model(images[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


# ------------------------------------------------------------------------------------ sampling
class PKSampler(Sampler[list[int]]):
    """Batches of ``p`` identities x ``k`` images of each (FaceNet; Hermans et al., 2017), for a DataLoader's
    ``batch_sampler``: every anchor has ``k - 1`` positives and ``(p - 1) k`` negatives in its batch.

    Args:
        labels (Tensor[N] int): the identity of each training image; an identity with fewer than ``k``
            images is drawn with replacement. p >= 2, k >= 2. batches: batches per epoch.
        generator: fixes the draw.
    """

    def __init__(self, labels: Tensor, p: int, k: int, batches: int, generator: torch.Generator | None = None):
        if p < 2 or k < 2:
            raise ValueError(f"a P x K batch needs p >= 2 identities and k >= 2 images each, got p={p}, k={k}")
        self.ids = labels.unique()
        if len(self.ids) < p:
            raise ValueError(f"p={p} identities per batch, but the labels hold only {len(self.ids)}")
        self.by_id = [torch.nonzero(labels == i).flatten() for i in self.ids]
        self.p, self.k, self.batches = p, k, batches
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        g = self.generator
        for _ in range(self.batches):
            batch = []
            for j in torch.randperm(len(self.ids), generator=g)[: self.p].tolist():
                members = self.by_id[j]
                if len(members) >= self.k:
                    pick = torch.randperm(len(members), generator=g)[: self.k]
                else:
                    pick = torch.randint(len(members), (self.k,), generator=g)
                batch += members[pick].tolist()
            yield batch


def random_pairs(labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs for the contrastive loss from a batch: every positive pair (i < j, same label) and as many
    negative pairs drawn at random -> ``(i, j, y)``, int64 Tensors[M], ``y`` 1 for positive pairs."""
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(1)
    pos = torch.nonzero(same & upper)  # (P, 2)
    neg = torch.nonzero(~same & upper)  # (Q, 2)
    if not len(pos) or not len(neg):
        raise ValueError("random_pairs needs a batch with at least one positive and one negative pair")
    neg = neg[torch.randperm(len(neg), generator=generator)[: len(pos)]]
    pairs = torch.cat([pos, neg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long()
    return pairs[:, 0], pairs[:, 1], y


def mine_triplets(embeddings: Tensor, labels: Tensor, strategy: Mining = "semi-hard", margin: float = 0.2,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Choose triplets (anchor, positive, negative) in a batch -> three int64 index Tensors[T].

    Args:
        embeddings (Tensor[B, D]): the batch's embeddings (used for distances only, no gradient).
        labels (Tensor[B]): identities; a P x K batch (:class:`PKSampler`).
        strategy:
            - ``"random"``: every (anchor, positive) pair with a random negative;
            - ``"hard"``: every (anchor, positive) pair with the negative closest to the anchor;
            - ``"semi-hard"`` (FaceNet): with the closest negative still farther than the positive,
              ``d(a, p) < d(a, n)`` (within the margin when one exists); if none is farther, the farthest;
            - ``"batch-hard"`` (Hermans et al.): one triplet per anchor, its farthest positive and
              closest negative.
        margin: used by ``"semi-hard"`` only to report which negatives lie in the margin band.
    """
    if strategy not in MINING:
        raise ValueError(f"unknown mining strategy {strategy!r}; choose one of {MINING}")
    if embeddings.dim() != 2 or labels.shape != (len(embeddings),):
        raise ValueError(f"embeddings must be Tensor[B, D] and labels Tensor[B], got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    with torch.no_grad():
        d = pairwise_distances(embeddings.detach().float())  # (B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    if not pos_mask.any() or not neg_mask.any(1).all():
        raise ValueError("every batch needs positives and negatives: sample it with PKSampler (p >= 2, k >= 2)")
    inf = torch.tensor(float("inf"), device=d.device)
    if strategy == "batch-hard":
        a = torch.nonzero(pos_mask.any(1)).flatten()
        p = torch.where(pos_mask, d, -inf)[a].argmax(1)
        n = torch.where(neg_mask, d, inf)[a].argmin(1)
        return a, p, n
    a, p = torch.nonzero(pos_mask, as_tuple=True)  # every (anchor, positive) pair
    d_an = torch.where(neg_mask[a], d[a], inf)  # (T, B) distance to each negative, inf elsewhere
    if strategy == "random":
        weights = neg_mask[a].float()
        on = draw_device(generator, weights.device)
        n = torch.multinomial(weights.to(on), 1, generator=generator).flatten().to(weights.device)
    elif strategy == "hard":
        n = d_an.argmin(1)
    else:  # semi-hard: the closest negative farther than the positive
        farther = torch.where(d_an > d[a, p][:, None], d_an, inf)
        n = farther.argmin(1)
        none = torch.isinf(farther.gather(1, n[:, None])).flatten()
        n[none] = torch.where(neg_mask[a[none]], d[a[none]], -inf).argmax(1)
    return a, p, n


def metric_step(loss: Literal["contrastive", "triplet"] = "triplet", mining: Mining = "semi-hard",
                margin: float = 0.2, generator: torch.Generator | None = None) -> Callable[..., dict[str, Tensor]]:
    """A step for :class:`coursekit.train.Trainer` on ``(images, labels)`` batches from a :class:`PKSampler`.

    ``"contrastive"``: deck 003's loss on :func:`random_pairs` (``mining`` ignored); ``"triplet"``: the
    triplet loss on :func:`mine_triplets` ``(mining)``. Logs ``loss`` and ``active`` (the share of pairs or
    triplets with a non-zero loss: when it nears 0 the batch teaches nothing, the reason to mine).
    """
    if loss not in ("contrastive", "triplet"):
        raise ValueError(f"unknown loss {loss!r}; choose 'contrastive' or 'triplet'")
    if mining not in MINING:
        raise ValueError(f"unknown mining strategy {mining!r}; choose one of {MINING}")

    def step(model: nn.Module, batch: Any, dev: torch.device) -> dict[str, Tensor]:
        images, labels = batch[0].to(dev), batch[1].to(dev)
        z = model(images)  # (B, D)
        if loss == "contrastive":
            i, j, y = random_pairs(labels.cpu(), generator)
            terms = contrastive_loss(z[i], z[j], y.to(dev), margin=margin, reduction="none")
        else:
            a, p, n = mine_triplets(z, labels, mining, margin, generator)
            terms = triplet_loss(z[a], z[p], z[n], margin=margin, reduction="none")
        return {"loss": terms.mean(), "active": (terms.detach() > 0).float().mean()}

    return step


# ------------------------------------------------------------------------------------ search
def exact_search(queries: Tensor, database: Tensor, k: int = 1, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours by L2, one matrix product per batch of queries (faiss's ``IndexFlatL2``).

    Args:
        queries (Tensor[Q, D]), database (Tensor[N, D]); k in 1 .. N.

    Returns:
        ``(distances, indices)``: Tensor[Q, k] squared L2 distances (as faiss returns) and int64 indices,
        nearest first.
    """
    if queries.dim() != 2 or database.dim() != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries [Q, D] and database [N, D] need the same D, got {tuple(queries.shape)} "
                         f"and {tuple(database.shape)}")
    if not 1 <= k <= len(database):
        raise ValueError(f"k must be between 1 and the database size {len(database)}, got {k}")
    dists, idx = [], []
    for i in range(0, len(queries), batch_size):
        d2 = pairwise_distances(queries[i : i + batch_size], database, squared=True)
        top = d2.topk(k, dim=1, largest=False)
        dists.append(top.values)
        idx.append(top.indices)
    return torch.cat(dists), torch.cat(idx)


def faiss_index(database: Tensor, kind: Literal["flat", "ivf", "hnsw"] = "ivf", nlist: int = 256,
                nprobe: int = 8, hnsw_m: int = 32, ef_search: int = 64, seed: int = 0) -> Any:
    """A faiss index over ``database`` (Tensor[N, D]), built and filled.

    - ``"flat"``: exact search (``IndexFlatL2``), the reference;
    - ``"ivf"``: inverted file (``IndexIVFFlat``): k-means into ``nlist`` cells, a query visits the
      ``nprobe`` nearest cells only;
    - ``"hnsw"``: a hierarchical navigable small-world graph (``IndexHNSWFlat``, ``hnsw_m`` links per
      node), greedy walks that keep ``ef_search`` candidates.

    Search with ``index.search(queries.numpy(), k)`` -> (squared distances, indices), numpy arrays.
    """
    import faiss
    import numpy as np

    kinds = ("flat", "ivf", "hnsw")
    if kind not in kinds:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {kinds}")
    x = np.ascontiguousarray(database.detach().cpu().numpy(), dtype=np.float32)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        if len(x) < nlist:
            raise ValueError(f"an IVF index with nlist={nlist} cells needs at least that many vectors, got {len(x)}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = nprobe
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efSearch = ef_search
    index.add(x)
    return index


def index_recall(approx: Tensor, exact: Tensor) -> float:
    """Recall of an approximate index against exact search: the share of queries whose true nearest
    neighbour (``exact[:, 0]``) is among the approximate top k (``approx``: int indices Tensor[Q, k])."""
    approx, exact = torch.as_tensor(approx), torch.as_tensor(exact)
    if approx.dim() != 2 or exact.dim() != 2 or len(approx) != len(exact):
        raise ValueError(f"approx [Q, k] and exact [Q, k'] need the same Q, got {tuple(approx.shape)} "
                         f"and {tuple(exact.shape)}")
    return float((approx == exact[:, :1]).any(1).double().mean())


def queries_per_second(search: Callable[[], Any], n_queries: int, repeat: int = 3) -> float:
    """``n_queries`` over the best of ``repeat`` wall-clock timings of ``search()``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        search()
        best = min(best, time.perf_counter() - start)
    return n_queries / best

