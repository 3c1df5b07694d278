"""Retrieval metrics: recall@k and mean average precision over a ranked gallery.

Protocol of metric learning on held-out classes (CUB-200, Stanford Online Products; notebook 10,
assignment 07): every image of the test set is a query in turn, the *other* test images are the
gallery, ranked by L2 distance between embeddings. An identity is never seen in training.

- recall@k: the share of queries with at least one image of their identity among their k nearest
  neighbours (the metric-learning literature's "Recall@K"; for k = 1 it is 1-NN accuracy).
- mAP: for each query, the average precision of the ranked gallery with "same identity" as relevant,
  averaged over queries (equals ``sklearn.metrics.average_precision_score`` per query when no two
  distances tie; ``tests/test_metrics_retrieval.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "pairwise_distances",
    "recall_at_k",
    "retrieval_average_precision",
    "retrieval_map",
]


def _check(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be Tensor[N, D], got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or len(labels) != len(embeddings):
        raise ValueError(f"labels must be Tensor[N] with N = {len(embeddings)} (one per embedding), "
                         f"got shape {tuple(labels.shape)}")
    if len(labels) < 2:
        raise ValueError("need at least 2 embeddings: each query is searched among the others")


def pairwise_distances(x: Tensor, y: Tensor | None = None, squared: bool = False) -> Tensor:
    """L2 distances between the rows of ``x`` (Tensor[N, D]) and of ``y`` (Tensor[M, D], default ``x``) -> Tensor[N, M].

    Computed as ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product, as faiss does), clamped at 0.
    """
    y = x if y is None else y
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    d2 = d2.clamp(min=0)
    return d2 if squared else d2.sqrt()


def _ranked_relevance(embeddings: Tensor, labels: Tensor) -> Tensor:
    """For each query, the gallery (all others) by increasing distance: bool Tensor[N, N - 1], True = same identity."""
    n = len(labels)
    d = pairwise_distances(embeddings.double(), squared=True)
    d.fill_diagonal_(float("inf"))  # a query does not find itself
    order = d.argsort(dim=1, stable=True)[:, : n - 1]  # (N, N-1)
    return labels[order] == labels[:, None]


def recall_at_k(embeddings: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Recall@k for each k in ``ks``, leave-one-out over the set.

    Args:
        embeddings (Tensor[N, D]): one vector per image. labels (Tensor[N] int): identities.
        ks: the k's, each in 1 .. N - 1.

    Returns:
        {k: share of queries whose k nearest other images include one of the same identity}.
    """
    _check(embeddings, labels)
    bad = [k for k in ks if not 1 <= int(k) <= len(labels) - 1]
    if bad:
        raise ValueError(f"every k must be between 1 and N - 1 = {len(labels) - 1}, got {bad}")
    hits = _ranked_relevance(embeddings, labels)
    return {int(k): float(hits[:, : int(k)].any(1).double().mean()) for k in ks}


def retrieval_average_precision(embeddings: Tensor, labels: Tensor) -> Tensor:
    """Average precision of each query's ranked gallery -> float64 Tensor[N] (NaN for a query alone in its identity).

    AP = mean over the relevant gallery images of the precision at their rank.
    """
    _check(embeddings, labels)
    rel = _ranked_relevance(embeddings, labels).double()  # (N, N-1)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    precision = rel.cumsum(1) / ranks  # precision after each rank
    n_rel = rel.sum(1)
    return (precision * rel).sum(1) / n_rel  # NaN when n_rel == 0


def retrieval_map(embeddings: Tensor, labels: Tensor) -> float:
    """Retrieval mAP: :func:`retrieval_average_precision` averaged over the queries that have a match."""
    ap = retrieval_average_precision(embeddings, labels)
    ap = ap[~ap.isnan()]
    if not len(ap):
        raise ValueError("no query has another image of its identity: mAP is undefined")
    return float(ap.mean())

