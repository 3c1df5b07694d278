"""coursekit.metrics.retrieval against an obvious loop and sklearn.metrics.average_precision_score."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from coursekit.metrics.retrieval import pairwise_distances, recall_at_k, retrieval_average_precision, retrieval_map


def _random_set(n, d, identities, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(identities, (n,), generator=g)
    centres = torch.randn(identities, d, generator=g)
    return centres[labels] + 0.8 * torch.randn(n, d, generator=g), labels


def _obvious_recall(x, labels, k):
    hits = 0
    for q in range(len(x)):
        others = [i for i in range(len(x)) if i != q]
        others.sort(key=lambda i: float(((x[q] - x[i]) ** 2).sum()))
        hits += any(labels[i] == labels[q] for i in others[:k])
    return hits / len(x)


def test_pairwise_distances_match_cdist():
    x, _ = _random_set(30, 7, 3, 0)
    y, _ = _random_set(20, 7, 3, 1)
    assert torch.allclose(pairwise_distances(x, y), torch.cdist(x, y), atol=1e-4)
    assert torch.allclose(pairwise_distances(x, y, squared=True), torch.cdist(x, y) ** 2, atol=1e-3)


@pytest.mark.parametrize("n, d, ids, seed", [(12, 3, 3, 0), (60, 8, 10, 1), (90, 16, 30, 2)])
def test_recall_at_k_matches_the_obvious_loop(n, d, ids, seed):
    x, labels = _random_set(n, d, ids, seed)
    got = recall_at_k(x, labels, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert got[k] == pytest.approx(_obvious_recall(x, labels, k))


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_sklearn(seed):
    x, labels = _random_set(50, 6, 8, seed)
    ours = retrieval_average_precision(x, labels)
    d = torch.cdist(x.double(), x.double())
    for q in range(len(x)):
        others = np.array([i for i in range(len(x)) if i != q])
        relevant = (labels[others] == labels[q]).numpy()
        if relevant.any():
            ref = average_precision_score(relevant, -d[q, others].numpy())
            assert float(ours[q]) == pytest.approx(ref, abs=1e-9)
        else:
            assert torch.isnan(ours[q])
    valid = ~torch.isnan(ours)
    assert retrieval_map(x, labels) == pytest.approx(float(ours[valid].mean()))


def test_perfect_and_worst_embeddings():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    perfect = torch.eye(3)[labels] * 10
    assert recall_at_k(perfect, labels, (1,))[1] == 1.0
    assert retrieval_map(perfect, labels) == 1.0
    # each image's match is the farthest of all: AP = 1 / 5
    far = torch.tensor([[0.0], [100.0], [1.0], [99.0], [2.0], [98.0]])
    assert recall_at_k(far, labels, (1,))[1] == 0.0
    assert retrieval_map(far, labels) == pytest.approx(1 / 5, abs=0.2)


def test_bad_input_is_explained():
    x, labels = _random_set(10, 3, 2, 0)
    with pytest.raises(ValueError, match="Tensor\\[N, D\\]"):
        recall_at_k(x[0], labels)
    with pytest.raises(ValueError, match="one per embedding"):
        recall_at_k(x, labels[:5])
    with pytest.raises(ValueError, match="between 1 and N - 1"):
        recall_at_k(x, labels, ks=(10,))
    with pytest.raises(ValueError, match="undefined"):
        retrieval_map(x[:3], torch.tensor([0, 1, 2]))
