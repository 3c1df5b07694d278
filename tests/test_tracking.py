"""coursekit.tracking: crops against a pixel loop, score labels, SiamFC's loss, both trackers on a clip."""

import numpy as np
import pytest
import torch

from coursekit import tracking
from coursekit.data.clips import Clips
from coursekit.metrics.tracking import success_auc
from coursekit.models.siamese import SiamFC


def test_crop_with_an_integer_grid_copies_pixels():
    frame = torch.arange(3 * 20 * 20, dtype=torch.float32).view(1, 3, 20, 20) / 1200
    # a 6 px crop centred on (10, 8) resized to 6 px: pixels x 7..12, y 5..10 exactly
    out = tracking.crop(frame, torch.tensor([[10.0, 8.0]]), torch.tensor([6.0]), 6)
    assert torch.allclose(out[0], frame[0, :, 5:11, 7:13], atol=1e-6)
    two = tracking.crop(frame, torch.tensor([[10.0, 8.0], [5.0, 5.0]]), torch.tensor([6.0, 4.0]), 8)
    assert two.shape == (2, 3, 8, 8)
    as_bytes = tracking.crop((frame * 255).round().byte(), torch.tensor([[10.0, 8.0]]), torch.tensor([6.0]), 6)
    assert torch.allclose(as_bytes, out, atol=1 / 255)


def test_context_side_adds_half_of_siamfcs_margin():
    box = torch.tensor([10.0, 10.0, 30.0, 20.0])  # w 20, h 10, p = (w + h) / 4 = 7.5
    assert float(tracking.context_side(box)) == pytest.approx(((20 + 7.5) * (10 + 7.5)) ** 0.5)


def test_score_labels_mark_the_cells_near_the_target():
    labels = tracking.score_labels(torch.tensor([[0.0, 0.0], [8.0, -4.0]]), 11, 4, 4.0)
    assert labels.shape == (2, 1, 11, 11)
    assert labels[0, 0, 5, 5] == 1 and labels[0].sum() == 5  # the centre and its 4 neighbours (distance 4)
    assert labels[1, 0, 4, 7] == 1  # x + 8 px = 2 cells right, y - 4 px = 1 cell up


def test_siamfc_loss_balances_positives_and_negatives():
    labels = torch.zeros(1, 1, 5, 5)
    labels[0, 0, 2, 2] = 1
    logits = torch.zeros(1, 1, 5, 5)
    # every cell at logit 0: loss log 2 for each half
    assert float(tracking.siamfc_loss(logits, labels)) == pytest.approx(np.log(2), rel=1e-6)


def test_pairs_and_step_run():
    clips = [Clips(2, n_frames=12, image_size=64, seed=0)[i] for i in range(2)]
    pairs = tracking.SiamFCPairs(clips, batch_size=3, batches=2, generator=torch.Generator().manual_seed(0))
    z, x, labels = pairs.sample()
    assert z.shape == (3, 3, 39, 39) and x.shape == (3, 3, 79, 79) and labels.shape == (3, 1, 11, 11)
    assert (labels.sum((1, 2, 3)) > 0).all()
    out = tracking.siamfc_step(SiamFC(width=4), next(iter(pairs)), torch.device("cpu"))
    assert out["loss"].requires_grad


def test_trackers_follow_a_clip_and_report_speed():
    clip = Clips(1, n_frames=10, image_size=64, occlusion=False, seed=2)[0]
    for make in (lambda: tracking.SiamFCTracker(SiamFC(width=4).eval()), lambda: tracking.TemplateTracker()):
        r = tracking.track(make(), clip["frames"], clip["boxes"][0], keep_scores=True)
        assert r.boxes[0].shape == (10, 4) and len(r.scores[0]) == 9 and r.frames == 9
        assert r.fps > 0 and r.cpu_fps > 0
    # template matching on a clip without occlusion keeps a good overlap
    r = tracking.track(tracking.TemplateTracker(), clip["frames"], clip["boxes"][0])
    assert success_auc(r.boxes[0][1:], clip["boxes"][1:]) > 0.3
    both = tracking.track_clips(lambda: tracking.TemplateTracker(), [clip, clip])
    assert len(both.boxes) == 2 and both.frames == 18


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="odd"):
        tracking.SiamFCTracker(SiamFC(), num_scales=2)
    with pytest.raises(ValueError, match="search_factor"):
        tracking.TemplateTracker(0.5)
    with pytest.raises(ValueError, match="T >= 2"):
        tracking.track(tracking.TemplateTracker(), torch.rand(1, 3, 32, 32), torch.tensor([1.0, 1, 5, 5]))
    with pytest.raises(ValueError, match="one shape"):
        tracking.siamfc_loss(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="at least one clip"):
        tracking.SiamFCPairs([])
