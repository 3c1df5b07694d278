"""Tests of coursekit.segmentation: joint augmentation, training step, TTA, boundary F-score, evaluation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coursekit import segmentation as S
from coursekit.data import SegmentationSet, Shapes
from coursekit.losses import class_weights_from_freq, soft_dice_loss
from coursekit.metrics import mean_iou


def _stripes(n: int = 2, size: int = 16, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks with vertical stripes of classes, images = the one-hot masks (3 channels): pixels say their class."""
    cols = torch.arange(size) * classes // size  # (size,)
    masks = cols.expand(n, size, size).clone()
    images = F.one_hot(masks, classes).permute(0, 3, 1, 2).float()
    return images, masks


# ---------------------------------------------------------------------------------- augmentation
def test_joint_augment_keeps_image_and_mask_aligned():
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (1, 8, 8)).repeat_interleave(4, 1).repeat_interleave(4, 2)  # 4x4 blocks
    image = F.one_hot(masks[0], 3).permute(2, 0, 1).float()  # channel c is 1 where the mask is c
    aug = S.JointAugment(brightness=0, contrast=0, generator=torch.Generator().manual_seed(1))
    flipped_or_cropped = 0
    for _ in range(20):
        out_image, out_mask = aug(image, masks[0])
        assert out_image.shape == image.shape and out_mask.shape == masks[0].shape and out_mask.dtype == torch.long
        # inside uniform regions the bilinear image and the nearest mask must agree exactly
        uniform = (F.max_pool2d(out_mask[None, None].float(), 3, 1, 1) == -F.max_pool2d(
            -out_mask[None, None].float(), 3, 1, 1))[0, 0]
        assert (out_image.argmax(0)[uniform] == out_mask[uniform]).all()
        assert uniform.float().mean() > 0.3
        flipped_or_cropped += not torch.equal(out_mask, masks[0])
    assert flipped_or_cropped >= 15


def test_joint_augment_flip_moves_mask_with_image_and_jitter_leaves_mask_alone():
    images, masks = _stripes(1, 16)
    aug = S.JointAugment(hflip=1.0, vflip=0.0, scale=(1.0, 1.0), brightness=0.5, contrast=0.5,
                         generator=torch.Generator().manual_seed(0))
    image, mask = aug(images[0], masks[0])
    assert torch.equal(mask, masks[0].flip(-1))
    assert torch.equal(image.argmax(0), mask)  # jitter rescales values, never moves them
    assert not torch.allclose(image, images[0].flip(-1))


def test_joint_augment_is_reproducible_with_a_seeded_generator():
    images, masks = _stripes(1, 16)
    a = S.JointAugment(generator=torch.Generator().manual_seed(3))(images[0], masks[0])
    b = S.JointAugment(generator=torch.Generator().manual_seed(3))(images[0], masks[0])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_joint_augment_rejects_bad_settings():
    with pytest.raises(ValueError, match="hflip"):
        S.JointAugment(hflip=1.5)
    with pytest.raises(ValueError, match="scale"):
        S.JointAugment(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="same H, W"):
        S.JointAugment()(torch.rand(3, 8, 8), torch.zeros(4, 4, dtype=torch.long))


def test_segmentation_set_from_shapes_keeps_the_semantic_masks():
    data = Shapes(3, 32, seed=0)
    ds = SegmentationSet.from_shapes(data, progress=False)
    image, mask = ds[1]
    assert torch.equal(image, data[1][0]) and torch.equal(mask, data[1][1]["semantic"])
    with pytest.raises(ValueError, match="integer class maps"):
        SegmentationSet(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8))


# ---------------------------------------------------------------------------------------- losses
def test_step_computes_the_chosen_loss_and_pixel_accuracy():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 1)
    images, masks = _stripes(2, 8)
    logits = model(images)
    out = S.make_step("ce")(model, (images, masks), torch.device("cpu"))
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, masks))
    assert out["acc"] == (logits.argmax(1) == masks).float().mean()
    out = S.make_step("ce+dice")(model, (images, masks), torch.device("cpu"))
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, masks) + soft_dice_loss(logits, masks))
    weights = class_weights_from_freq(torch.tensor([10.0, 1.0, 1.0]))
    out = S.make_step("weighted_ce", weights)(model, (images, masks), torch.device("cpu"))
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, masks, weight=weights))


def test_step_rejects_unknown_loss_and_missing_weights():
    with pytest.raises(ValueError, match="choose one of"):
        S.make_step("focal")
    with pytest.raises(ValueError, match="class_weights"):
        S.make_step("weighted_ce")


def test_train_segmenter_learns_a_trivial_task():
    torch.manual_seed(0)
    images, masks = _stripes(8, 16)
    loader = torch.utils.data.DataLoader(SegmentationSet(images, masks), batch_size=4)
    model = nn.Conv2d(3, 3, 1)
    trainer = S.train_segmenter(model, loader, steps=60, lr=0.1, device="cpu", progress=False)
    assert trainer.global_step == 60
    assert S.evaluate(model, images, masks, 3, device="cpu").miou == 1.0


# ------------------------------------------------------------------------------------------- TTA
class _MirrorSymmetric(nn.Module):
    """A flip-equivariant model: a conv whose kernel is its own mirror image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return self.conv(x)


def test_flip_tta_is_a_no_op_for_a_flip_equivariant_model():
    torch.manual_seed(0)
    model, x = _MirrorSymmetric(), torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(S.predict(model, x, tta=True, device="cpu"), S.predict(model, x, device="cpu"))


def test_flip_tta_averages_the_mirrored_prediction_for_other_models():
    torch.manual_seed(0)
    model, x = nn.Conv2d(3, 4, 3, padding=1), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1).flip(-1)) / 2
    probs = S.predict(model, x, tta=True, device="cpu", batch_size=1)
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs, S.predict(model, x, device="cpu"))


def test_predict_restores_train_mode():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).train()
    S.predict(model, torch.rand(2, 3, 4, 4), device="cpu")
    assert model.training


# ------------------------------------------------------------------------------- boundary metric
def _edge_at(col: int, size: int = 8) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[:, col:] = 1
    return mask


def test_boundary_map_marks_both_sides_of_an_edge_and_not_the_image_border():
    edge = S.boundary_map(_edge_at(4))
    assert edge[:, 3].all() and edge[:, 4].all() and edge.sum() == 16
    assert not S.boundary_map(torch.zeros(5, 5, dtype=torch.long)).any()


def test_boundary_f_score_known_values():
    gt, shifted = _edge_at(4), _edge_at(5)
    assert S.boundary_f_score(gt, gt, tolerance=0) == 1.0
    # true edge pixels: columns 3, 4; predicted: 4, 5. Exact matching: P = R = 1/2
    assert S.boundary_f_score(shifted, gt, tolerance=0) == pytest.approx(0.5)
    assert S.boundary_f_score(shifted, gt, tolerance=1) == 1.0  # one pixel off is within tolerance 1
    # predicted edge 3 columns away (cols 6, 7 vs 3, 4): nothing matches within 1 px
    assert S.boundary_f_score(_edge_at(7), gt, tolerance=1) == 0.0
    # a spurious region along the bottom: pred edges are cols 3-4 of rows 0-6 (14 px, all correct) plus
    # rows 5-6 (12 more px); the true edge (16 px) is matched in 14. F = 2 * 14 / (26 + 16) = 2 / 3
    extra = gt.clone()
    extra[6:, :] = 2
    assert S.boundary_map(extra).sum() == 26
    assert S.boundary_f_score(extra, gt, tolerance=0) == pytest.approx(2 / 3)
    empty = torch.zeros(8, 8, dtype=torch.long)
    assert S.boundary_f_score(empty, empty) == 1.0 and S.boundary_f_score(empty, gt) == 0.0


def test_boundary_f_score_counts_over_a_batch_and_checks_inputs():
    gt = torch.stack([_edge_at(4), _edge_at(4)])
    pred = torch.stack([_edge_at(4), _edge_at(5)])
    assert S.boundary_f_score(pred, gt, tolerance=0) == pytest.approx(0.75)  # 24 of 32 pixels match
    with pytest.raises(ValueError, match="same shape"):
        S.boundary_f_score(gt[0], gt)
    with pytest.raises(ValueError, match="tolerance"):
        S.boundary_f_score(gt, gt, tolerance=-1)


def test_evaluate_reports_metrics_of_the_predictions():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 1)
    images, masks = _stripes(4, 16)
    scores = S.evaluate(model, images, masks, 3, device="cpu")
    pred = S.predict(model, images, device="cpu").argmax(1)
    assert scores.miou == pytest.approx(mean_iou(pred, masks, 3))
    assert scores.pixel_acc == pytest.approx((pred == masks).float().mean().item())
    assert scores.boundary_f == S.boundary_f_score(pred, masks)
    assert scores.iou.shape == (3,) and not math.isnan(scores.miou)


# ---------------------------------------------------------------------------------------- memory
def test_activation_memory_counts_saved_tensors_and_grows_with_resolution():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # a lone conv saves only its input for the weight gradient: 3 x 16 x 16 float32
    assert S.activation_memory(conv, torch.rand(1, 3, 16, 16)) == 3 * 16 * 16 * 4
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    small, big = S.activation_memory(net, torch.rand(1, 3, 16, 16)), S.activation_memory(net, torch.rand(1, 3, 32, 32))
    assert big == 4 * small
