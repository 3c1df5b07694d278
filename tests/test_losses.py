"""coursekit.losses against torchvision's sigmoid_focal_loss, smp's Dice / Jaccard losses, F.cross_entropy."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before segmentation_models_pytorch is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from segmentation_models_pytorch.losses import DiceLoss, JaccardLoss  # noqa: E402
from sklearn.utils.class_weight import compute_class_weight  # noqa: E402
from torchvision.ops import sigmoid_focal_loss as tv_focal  # noqa: E402

from coursekit.losses import (  # noqa: E402
    class_counts,
    class_weights_from_freq,
    focal_loss_curve,
    sigmoid_focal_loss,
    soft_dice_loss,
    soft_jaccard_loss,
    weighted_cross_entropy,
)

TOL = 1e-5


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2), (0.5, 0), (-1, 1.5), (1.0, 5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_loss_matches_torchvision(alpha, gamma, reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 7, generator=g) * 4
    x[0, 0, :3] = torch.tensor([40.0, -40.0, 0.0])  # saturated logits must not overflow
    t = (torch.rand(4, 50, 7, generator=g) < 0.1).float()
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = sigmoid_focal_loss(x_ours, t, alpha, gamma, reduction)
    ref = tv_focal(x_ref, t, alpha, gamma, reduction)
    assert torch.allclose(ours, ref, atol=TOL, rtol=1e-5)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.allclose(x_ours.grad, x_ref.grad, atol=TOL)


def test_focal_loss_down_weights_easy_examples():
    p_t = torch.tensor([0.1, 0.5, 0.9])
    ratio = focal_loss_curve(p_t, 2) / focal_loss_curve(p_t, 0)
    assert torch.allclose(ratio, torch.tensor([0.81, 0.25, 0.01]))  # (1 - p_t)**2
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), alpha=2.0)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="avg")


SEG_OPTIONS = [
    dict(),
    dict(smooth=1.0),
    dict(log_loss=True),
    dict(ignore_index=255),
    dict(smooth=0.5, eps=1e-3, log_loss=True, ignore_index=255),
]


def _seg_batch(g, mode, C=4):
    logits = torch.randn(2, C if mode != "binary" else 1, 9, 11, generator=g) * 2
    if mode == "multiclass":
        target = torch.randint(0, C - 1, (2, 9, 11), generator=g)  # the last class never occurs
        target[0, :2] = 255  # pixels to ignore (when ignore_index=255)
    else:
        target = (torch.rand(logits.shape, generator=g) < 0.3).float()
        target[:, :, :2] = 255.0
    return logits, target


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("options", SEG_OPTIONS)
def test_soft_dice_and_jaccard_match_smp(mode, options):
    g = torch.Generator().manual_seed(1)
    logits, target = _seg_batch(g, mode)
    if "ignore_index" not in options:
        target = target.masked_fill(target == 255, 0)
    for ours_fn, smp_cls in ((soft_dice_loss, DiceLoss), (soft_jaccard_loss, JaccardLoss)):
        x_ours, x_ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        ours = ours_fn(x_ours, target, mode, **options)
        ref = smp_cls(mode, **options)(x_ref, target)
        assert torch.allclose(ours, ref, atol=TOL), (ours_fn.__name__, ours, ref)
        ours.backward()
        ref.backward()
        assert torch.allclose(x_ours.grad, x_ref.grad, atol=1e-6)


def test_soft_jaccard_equals_iou_on_hard_predictions():
    # probabilities that are exactly 0 / 1: the soft IoU is the IoU of the two masks
    pred = torch.zeros(1, 1, 6, 6)
    pred[..., :4, :4] = 1
    target = torch.zeros(1, 1, 6, 6)
    target[..., 2:, 2:] = 1
    iou = 4 / (16 + 16 - 4)
    dice = 2 * 4 / (16 + 16)
    assert torch.isclose(soft_jaccard_loss(pred, target, "binary", from_logits=False), torch.tensor(1 - iou))
    assert torch.isclose(soft_dice_loss(pred, target, "binary", from_logits=False), torch.tensor(1 - dice))
    assert soft_dice_loss(target, target, "binary", from_logits=False) == 0


def test_soft_losses_bad_input_raises():
    with pytest.raises(ValueError, match="mode"):
        soft_dice_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), "multi")
    with pytest.raises(ValueError, match="class indices"):
        soft_jaccard_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3))


@pytest.mark.parametrize("shape", [(20, 5), (2, 5, 6, 7)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_cross_entropy_matches_torch(shape, reduction):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(*shape, generator=g)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    target.view(-1)[:3] = -100
    weights = torch.rand(shape[1], generator=g) * 3
    for w in (weights, None):
        ours = weighted_cross_entropy(logits, target, w, reduction=reduction)
        ref = F.cross_entropy(logits, target, weight=w, reduction=reduction)
        assert torch.allclose(ours, ref, atol=TOL)


def test_class_weights_from_freq():
    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 10 + [4] * 5)  # class 3 never occurs
    counts = class_counts(labels, 5)
    assert counts.tolist() == [70, 20, 10, 0, 5]
    present = [0, 1, 2, 4]
    # "inverse" is scikit-learn's "balanced" for the classes that occur (computed over those 4 classes)
    sk = compute_class_weight("balanced", classes=np.array(present), y=labels.numpy())
    ours = class_weights_from_freq(counts[present], "inverse")
    assert np.allclose(ours.numpy(), sk)
    median = class_weights_from_freq(counts, "median")
    f = counts / counts.sum()
    assert torch.allclose(median[present], np.median(f[present].numpy()) / f[present])
    assert median[3] == 0
    log = class_weights_from_freq(counts, "log")
    assert torch.allclose(log[present], 1 / torch.log(1.02 + f[present]).float())
    assert log.max() <= 1 / np.log(1.02) and log[3] == 0
    # rare classes weigh more, in every method
    for method in ("inverse", "median", "log"):
        w = class_weights_from_freq(counts, method)
        assert w[0] < w[1] < w[2]
    with pytest.raises(ValueError, match="method"):
        class_weights_from_freq(counts, "sqrt")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        class_counts(labels, 3)


# ---------------------------------------------------------------------------------------- NT-Xent (notebook 11)
@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("N, D", [(2, 3), (16, 8), (40, 128)])
def test_nt_xent_matches_pytorch_metric_learning(tau, N, D):
    from pytorch_metric_learning.losses import NTXentLoss

    from coursekit.losses import nt_xent_loss

    g = torch.Generator().manual_seed(N + D)
    z1, z2 = torch.randn(N, D, generator=g) * 3, torch.randn(N, D, generator=g)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ours = nt_xent_loss(a, b, tau)
    z = torch.cat([z1, z2]).requires_grad_(True)
    ref = NTXentLoss(temperature=tau)(z, torch.cat([torch.arange(N), torch.arange(N)]))
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    ours.backward()
    ref.backward()
    assert torch.allclose(torch.cat([a.grad, b.grad]), z.grad, atol=1e-6)


def test_nt_xent_obvious_reference_and_options():
    from coursekit.losses import nt_xent_loss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    tau = 0.3
    for include_positive in (True, False):
        losses = []
        for i in range(10):  # the deck's formula, one anchor at a time
            j = (i + 5) % 10
            others = [k for k in range(10) if k != i and (include_positive or k != j)]
            denominator = sum(torch.exp(z[i] @ z[k] / tau) for k in others)
            losses.append(-torch.log(torch.exp(z[i] @ z[j] / tau) / denominator))
        expected = torch.stack(losses).mean()
        assert torch.allclose(nt_xent_loss(z1, z2, tau, include_positive=include_positive), expected, atol=1e-5)
    # identical views far from each other: the loss goes to 0 as tau shrinks
    e = torch.eye(4)
    assert nt_xent_loss(e, e, tau=0.01) < 1e-6
    assert nt_xent_loss(e, e, tau=0.01, normalize=False) < 1e-6
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent_loss(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tau"):
        nt_xent_loss(z1, z2, tau=0.0)


# ---------------------------------------------------------------------------------------- metric learning (notebook 10)
def _obvious_contrastive(x1, x2, y, m):
    """Deck 003's formula, one pair at a time."""
    out = []
    for a, b, t in zip(x1, x2, y):
        a, b = a / a.norm(), b / b.norm()
        d2 = float(((a - b) ** 2).sum())
        out.append(t * d2 + (1 - t) * max(0.0, m - d2))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_contrastive_loss_is_deck_003s_formula(margin):
    from coursekit.losses import contrastive_loss

    g = torch.Generator().manual_seed(7)
    x1, x2 = torch.randn(30, 8, generator=g, dtype=torch.float64), torch.randn(30, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=g)
    ours = contrastive_loss(x1, x2, y, margin, reduction="none")
    assert torch.allclose(ours, _obvious_contrastive(x1, x2, y.tolist(), margin), atol=1e-12)
    assert torch.isclose(contrastive_loss(x1, x2, y, margin), ours.mean())
    assert torch.isclose(contrastive_loss(x1, x2, y, margin, reduction="sum"), ours.sum())


@pytest.mark.parametrize("margin", [0.3, 1.0, 1.5])
def test_contrastive_loss_matches_pytorch_metric_learning(margin):
    # Same terms with a squared distance and pos_margin 0; pml averages positive and negative pairs apart.
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import MeanReducer

    from coursekit.losses import contrastive_loss

    g = torch.Generator().manual_seed(int(margin * 10))
    n = 40
    x1, x2 = torch.randn(n, 16, generator=g, dtype=torch.float64), torch.randn(n, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    i, pos, neg = torch.arange(n), y == 1, y == 0
    ref_fn = ContrastiveLoss(pos_margin=0, neg_margin=margin, distance=LpDistance(power=2), reducer=MeanReducer())
    ref = ref_fn(torch.cat([x1, x2]), torch.arange(2 * n), (i[pos], n + i[pos], i[neg], n + i[neg]))
    terms = contrastive_loss(x1, x2, y, margin, reduction="none")
    assert torch.isclose(terms[pos].mean() + terms[neg].mean(), ref, atol=1e-10)


@pytest.mark.parametrize("margin", [0.01, 0.2, 1.0])  # torch rejects margin 0
@pytest.mark.parametrize("n, d", [(1, 4), (25, 16), (64, 128)])
def test_triplet_loss_matches_torch(margin, n, d):
    from coursekit.losses import triplet_loss

    g = torch.Generator().manual_seed(n + d)
    a, p, q = (torch.randn(n, d, generator=g) for _ in range(3))
    leaves = [t.clone().requires_grad_(True) for t in (a, p, q)]
    ours = triplet_loss(*leaves, margin=margin)
    ref_leaves = [t.clone().requires_grad_(True) for t in (a, p, q)]
    ref = F.triplet_margin_loss(*ref_leaves, margin=margin)  # adds eps=1e-6 inside the norm
    assert torch.allclose(ours, ref, atol=1e-5)
    ours.backward()
    ref.backward()
    for mine, theirs in zip(leaves, ref_leaves):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-4)


def test_triplet_loss_matches_pytorch_metric_learning_on_normalised_embeddings():
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.reducers import MeanReducer

    from coursekit.losses import triplet_loss

    g = torch.Generator().manual_seed(3)
    a, p, q = (F.normalize(torch.randn(50, 32, generator=g, dtype=torch.float64), dim=1) for _ in range(3))
    idx = (torch.arange(50), torch.arange(50, 100), torch.arange(100, 150))
    ref = TripletMarginLoss(margin=0.2, reducer=MeanReducer())(torch.cat([a, p, q]), torch.arange(150), idx)
    assert torch.isclose(triplet_loss(a, p, q, 0.2), ref, atol=1e-10)
    # FaceNet's squared distances, by hand
    sq = ((a - p) ** 2).sum(1) - ((a - q) ** 2).sum(1) + 0.2
    assert torch.allclose(triplet_loss(a, p, q, 0.2, squared=True, reduction="none"), sq.clamp(min=0))


def test_metric_losses_reject_bad_input():
    from coursekit.losses import contrastive_loss, triplet_loss

    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(x, torch.randn(5, 3), torch.ones(4))
    with pytest.raises(ValueError, match="pair labels"):
        contrastive_loss(x, x, torch.ones(3))
    with pytest.raises(ValueError, match="margin"):
        contrastive_loss(x, x, torch.ones(4), margin=0)
    with pytest.raises(ValueError, match="one shape"):
        triplet_loss(x, x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="margin"):
        triplet_loss(x, x, x, margin=-1)
    with pytest.raises(ValueError, match="reduction"):
        triplet_loss(x, x, x, reduction="avg")
