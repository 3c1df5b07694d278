"""coursekit.retrieval: P x K sampling, triplet mining against loops, search against brute force and faiss."""

import pytest
import torch

from coursekit import retrieval
from coursekit.metrics.retrieval import pairwise_distances


def _batch(p=4, k=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    return torch.randn(p * k, d, generator=g), labels


def test_pk_sampler_draws_p_identities_k_times():
    labels = torch.arange(10).repeat_interleave(5)
    sampler = retrieval.PKSampler(labels, p=4, k=3, batches=7, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7
    for b in batches:
        ids = labels[b]
        assert len(b) == 12 and len(set(b)) == 12 and sorted(torch.bincount(ids)[ids.unique()].tolist()) == [3] * 4


def test_random_pairs_are_balanced_and_correct():
    _, labels = _batch()
    i, j, y = retrieval.random_pairs(labels, torch.Generator().manual_seed(0))
    assert (y == 1).sum() == (y == 0).sum() == 4 * 3  # C(3, 2) positive pairs per identity
    assert torch.equal((labels[i] == labels[j]).long(), y) and (i < j).all()


@pytest.mark.parametrize("strategy", ["hard", "semi-hard", "batch-hard"])
def test_mining_matches_a_loop(strategy):
    x, labels = _batch(seed=1)
    d = pairwise_distances(x)
    a, p, n = retrieval.mine_triplets(x, labels, strategy, margin=0.2)
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()
    negatives = lambda i: [j for j in range(len(x)) if labels[j] != labels[i]]
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
        if strategy == "hard":
            assert d[ai, ni] == min(d[ai, j] for j in negatives(ai))
        elif strategy == "batch-hard":
            positives = [j for j in range(len(x)) if labels[j] == labels[ai] and j != ai]
            assert d[ai, pi] == max(d[ai, j] for j in positives)
            assert d[ai, ni] == min(d[ai, j] for j in negatives(ai))
        else:
            farther = [d[ai, j] for j in negatives(ai) if d[ai, j] > d[ai, pi]]
            expected = min(farther) if farther else max(d[ai, j] for j in negatives(ai))
            assert d[ai, ni] == expected
    if strategy == "batch-hard":
        assert torch.equal(a, torch.arange(len(x)))
    else:
        assert len(a) == 4 * 3 * 2  # every ordered (anchor, positive) pair


def test_metric_step_trains_an_embedding():
    from coursekit.models.siamese import EmbeddingNet

    torch.manual_seed(0)
    net = EmbeddingNet(dim=16, width=4)
    images, labels = torch.rand(12, 3, 16, 16), torch.arange(4).repeat_interleave(3)
    for loss, mining in [("triplet", "random"), ("triplet", "semi-hard"), ("contrastive", "random")]:
        out = retrieval.metric_step(loss, mining, generator=torch.Generator().manual_seed(0))(
            net, (images, labels), torch.device("cpu"))
        assert out["loss"].requires_grad and 0 <= float(out["active"]) <= 1


def test_exact_search_matches_brute_force_and_faiss_flat():
    g = torch.Generator().manual_seed(2)
    db, q = torch.randn(500, 16, generator=g), torch.randn(20, 16, generator=g)
    dist, idx = retrieval.exact_search(q, db, k=5, batch_size=7)
    ref = torch.cdist(q, db).topk(5, largest=False)
    assert torch.equal(idx, ref.indices)
    assert torch.allclose(dist, ref.values**2, atol=1e-3)
    fd, fi = retrieval.faiss_index(db, "flat").search(q.numpy(), 5)
    assert torch.equal(torch.from_numpy(fi), idx)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_true_neighbours(kind):
    g = torch.Generator().manual_seed(3)
    db, q = torch.randn(2000, 16, generator=g), torch.randn(50, 16, generator=g)
    _, exact = retrieval.exact_search(q, db, k=1)
    index = retrieval.faiss_index(db, kind, nlist=32, nprobe=32)  # IVF visiting every cell is exact
    _, approx = index.search(q.numpy(), 5)
    assert retrieval.index_recall(torch.from_numpy(approx), exact) >= (1.0 if kind == "ivf" else 0.9)


def test_pretrained_embedding_and_embed():
    from torchvision.models import resnet18

    model = retrieval.pretrained_embedding(resnet18(weights=None), size=32)
    out = retrieval.embed(model, torch.rand(5, 3, 24, 24), batch_size=2)
    assert out.shape == (5, 512) and torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


def test_bad_input_is_explained():
    x, labels = _batch()
    with pytest.raises(ValueError, match="choose one of"):
        retrieval.mine_triplets(x, labels, "hardest")
    with pytest.raises(ValueError, match="PKSampler"):
        retrieval.mine_triplets(x[:4], torch.arange(4))
    with pytest.raises(ValueError, match="p >= 2"):
        retrieval.PKSampler(labels, 1, 3, 1)
    with pytest.raises(ValueError, match="only 4"):
        retrieval.PKSampler(labels, 5, 3, 1)
    with pytest.raises(ValueError, match="same D"):
        retrieval.exact_search(torch.rand(2, 3), torch.rand(5, 4))
    with pytest.raises(ValueError, match="nlist"):
        retrieval.faiss_index(torch.rand(10, 4), "ivf", nlist=32)
    with pytest.raises(ValueError, match="choose one of"):
        retrieval.faiss_index(torch.rand(10, 4), "lsh")
    with pytest.raises(ValueError, match="contrastive"):
        retrieval.metric_step("arcface")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_mining_on_cuda_with_a_cpu_generator_draws_what_the_cpu_draws():
    # Found on a GPU (notebook 10): torch.multinomial on CUDA refuses a CPU generator.
    x, labels = _batch(seed=2)
    on_cpu = retrieval.mine_triplets(x, labels, "random", generator=torch.Generator().manual_seed(0))
    on_gpu = retrieval.mine_triplets(x.cuda(), labels.cuda(), "random", generator=torch.Generator().manual_seed(0))
    assert all(c.device.type == "cuda" and torch.equal(c.cpu(), a) for a, c in zip(on_cpu, on_gpu))
