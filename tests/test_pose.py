"""Heatmap targets and decoding, keypoint augmentation, the pose dataset wrapper and loss."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import tv_tensors

from coursekit import pose
from coursekit.data import CocoKeypoints, HeatmapDataset, OfflineError, StickFigures
from coursekit.metrics import pck

H = W = 64
h = w = 16  # 4 pixels per heatmap cell


def _cell_centre(i: int, j: int) -> list[float]:
    """Image pixels (x, y) of heatmap cell (row i, column j)."""
    return [(j + 0.5) * W / w, (i + 0.5) * H / h]


# ---------------------------------------------------------------- encoding
def test_heatmap_peaks_at_the_keypoint_with_value_one_and_sigma_width():
    kp = torch.tensor([_cell_centre(5, 9), _cell_centre(12, 2)])
    for sigma in (1.0, 2.0):
        hm = pose.heatmaps(kp, None, (h, w), (H, W), sigma=sigma)
        assert hm.shape == (2, h, w)
        assert hm[0, 5, 9] == 1.0 and hm[1, 12, 2] == 1.0
        assert hm[0].flatten().argmax() == 5 * w + 9
        # one cell away: exp(-1 / (2 sigma^2)); one diagonal cell: exp(-2 / (2 sigma^2))
        assert hm[0, 5, 10].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-6)
        assert hm[0, 4, 8].item() == pytest.approx(math.exp(-2 / (2 * sigma**2)), rel=1e-6)
        # the spread of the map is sigma cells (second moment of a Gaussian that fits inside)
        ys = torch.arange(h) + 0.5
        p = hm[0].sum(1) / hm[0].sum()
        std = (p * (ys - ys @ p) ** 2).sum().sqrt()
        assert std.item() == pytest.approx(sigma, rel=0.02)


def test_heatmaps_are_batched_and_invisible_joints_are_all_zero():
    kp = torch.rand(3, 4, 2) * 64
    visible = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])
    hm = pose.heatmaps(kp, visible, 16, 64)
    assert hm.shape == (3, 4, 16, 16)
    assert (hm[~visible] == 0).all()
    assert (hm[visible].amax(dim=(-1, -2)) > 0.3).all()  # a peak within a cell of every visible joint
    torch.testing.assert_close(hm[2, 1], pose.heatmaps(kp[2, 1:2], None, 16, 64)[0])


def test_non_square_heatmap_uses_separate_strides():
    kp = torch.tensor([[20.0, 6.0]])  # image 48 wide x 24 high, heatmap 6 x 12: 4 px / cell in x, 4 in y
    hm = pose.heatmaps(kp, None, (6, 12), (24, 48))
    assert hm.shape == (1, 6, 12)
    assert divmod(int(hm[0].flatten().argmax()), 12) == (1, 4)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="keypoints"):
        pose.heatmaps(torch.rand(4, 3), None, 16, 64)
    with pytest.raises(ValueError, match="visible"):
        pose.heatmaps(torch.rand(4, 2), torch.ones(5, dtype=torch.bool), 16, 64)
    with pytest.raises(ValueError, match="sigma"):
        pose.heatmaps(torch.rand(4, 2), None, 16, 64, sigma=0)
    with pytest.raises(ValueError, match="heatmap_size"):
        pose.heatmaps(torch.rand(4, 2), None, 0, 64)
    with pytest.raises(ValueError, match="heatmaps"):
        pose.decode_heatmaps(torch.rand(16, 16), 64)


# ---------------------------------------------------------------- decoding
def test_decode_known_values_argmax_then_quarter_cell_towards_the_higher_neighbour():
    hm = torch.zeros(2, h, w)
    hm[0, 3, 7] = 1.0
    hm[0, 3, 8] = 0.5  # right neighbour higher than the left one (0): shift +x
    hm[0, 2, 7] = 0.2  # upper neighbour higher than the lower one: shift -y
    hm[1, 0, 0] = 1.0  # at the border: no shift
    hm[1, 0, 1] = 0.5
    kp, scores = pose.decode_heatmaps(hm, (H, W), subpixel=False)
    torch.testing.assert_close(kp, torch.tensor([_cell_centre(3, 7), _cell_centre(0, 0)]))
    torch.testing.assert_close(scores, torch.tensor([1.0, 1.0]))
    kp, _ = pose.decode_heatmaps(hm, (H, W))
    quarter = 0.25 * W / w  # one quarter cell = 1 pixel here
    torch.testing.assert_close(kp[0], torch.tensor(_cell_centre(3, 7)) + torch.tensor([quarter, -quarter]))
    torch.testing.assert_close(kp[1], torch.tensor(_cell_centre(0, 0)))


def test_subpixel_round_trip_is_within_a_quarter_cell_and_beats_plain_argmax():
    g = torch.Generator().manual_seed(0)
    kp = 8 + torch.rand(500, 15, 2, generator=g) * (64 - 16)  # sub-pixel positions, away from the border
    hm = pose.heatmaps(kp, None, 16, 64)
    shifted, _ = pose.decode_heatmaps(hm, 64)
    plain, _ = pose.decode_heatmaps(hm, 64, subpixel=False)
    cell = 64 / 16
    err_shift = (shifted - kp).abs() / cell  # per coordinate, in heatmap cells
    err_plain = (plain - kp).abs() / cell
    assert shifted.shape == (500, 15, 2)
    assert err_shift.max() <= 0.25 + 1e-5
    assert err_plain.max() <= 0.5 + 1e-5
    # argmax alone: uniform error in [0, 0.5] (mean 1/4); shifted: in [0, 0.25] (mean 1/8)
    assert err_plain.mean().item() == pytest.approx(0.25, abs=0.01)
    assert err_shift.mean().item() == pytest.approx(0.125, abs=0.01)


def test_invisible_joints_are_excluded_from_pck():
    kp = torch.tensor([[[20.0, 20.0], [40.0, 30.0], [50.0, 10.0]]])
    visible = torch.tensor([[True, False, True]])
    pred, scores = pose.decode_heatmaps(pose.heatmaps(kp, visible, 16, 64), 64)
    assert scores[0, 1] == 0  # nothing to find in an all-zero map
    assert (pred[0, 1] - kp[0, 1]).norm() > 10  # ... so its decoded position is wrong
    assert pck(pred, kp, visible, norm=10.0, threshold=0.2) == 1.0
    assert pck(pred, kp, torch.ones_like(visible), norm=10.0, threshold=0.2) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- augmentation
def test_affine_matrix_matches_torchvision_keypoints():
    kp = torch.tensor([[10.5, 20.5], [40.0, 8.0], [-3.0, 70.0]])
    for angle, scale, translate in ((25.0, 1.2, (3.0, -2.0)), (-30.0, 0.75, (0.0, 0.0)), (90.0, 1.0, (1.0, 1.0))):
        ref = TF.affine(tv_tensors.KeyPoints(kp, canvas_size=(64, 48)), angle=angle, translate=list(translate),
                        scale=scale, shear=[0.0, 0.0])
        ours = pose.affine_keypoints(kp, pose.affine_matrix(angle, scale, (64, 48), translate))
        torch.testing.assert_close(ours, ref.as_subclass(torch.Tensor), atol=1e-4, rtol=0)


def _blob(size: tuple[int, int], centre: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """A bright Gaussian dot ``[1, H, W]`` centred at ``centre`` (x, y) pixels."""
    ys, xs = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    return torch.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))[None]


@pytest.mark.parametrize("seed", range(6))
def test_keypoints_follow_the_pixels(seed):
    g = torch.Generator().manual_seed(seed)
    size = (48, 64)
    kp = torch.tensor([[20.3, 15.7]]) + torch.rand(1, 2, generator=g) * 10
    image = _blob(size, kp[0]).expand(3, -1, -1)
    out, moved, visible = pose.random_affine_pose(image, kp, torch.tensor([True]), generator=g)
    assert out.shape == image.shape and visible.item()
    peak = divmod(int(out[0].flatten().argmax()), size[1])
    found = torch.tensor([peak[1] + 0.5, peak[0] + 0.5])
    assert (found - moved[0]).norm() <= 1.0, (found, moved[0])


def test_keypoints_leaving_the_image_become_invisible():
    image = torch.rand(3, 64, 64)
    kp = torch.tensor([[2.0, 2.0], [32.0, 32.0], [60.0, 33.0]])
    visible = torch.tensor([True, True, False])
    _, moved, vis = pose.affine_pose(image, kp, visible, angle=0.0, scale=1.25)
    assert (moved[0] < 0).all()  # pushed out of the corner by the zoom
    assert vis.tolist() == [False, True, False]  # an invisible joint stays invisible
    _, moved, vis = pose.affine_pose(image, kp, visible, angle=45.0, scale=1.0)
    assert moved[0, 1] < 0 and not vis[0]  # a corner rotated by 45 degrees leaves through the top


def test_random_affine_pose_stays_within_the_paper_ranges():
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(3, 64, 64)
    kp = torch.tensor([[52.0, 32.0]])  # 20 px right of the centre (32, 32)
    angles, scales = [], []
    for _ in range(300):
        _, moved, _ = pose.random_affine_pose(image, kp, torch.tensor([True]), generator=g)
        d = moved[0] - torch.tensor([32.0, 32.0])
        scales.append(d.norm().item() / 20)
        angles.append(math.degrees(math.atan2(d[1].item(), d[0].item())))
    assert 0.75 <= min(scales) < 0.8 and 1.2 < max(scales) <= 1.25
    assert -30 <= min(angles) < -25 and 25 < max(angles) <= 30


# ---------------------------------------------------------------- dataset, loss
def test_heatmap_dataset_wraps_stick_figures():
    base = StickFigures(4, 64, seed=0)
    ds = HeatmapDataset(base, 16, augment=True, generator=torch.Generator().manual_seed(0))
    images, targets = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 64, 64)
    assert targets["heatmaps"].shape == (4, len(StickFigures.KEYPOINTS), 16, 16)
    assert targets["torso"].shape == targets["head"].shape == (4,)
    vis = targets["visible"]
    decoded, _ = pose.decode_heatmaps(targets["heatmaps"], 64)
    err = (decoded - targets["keypoints"]).abs()[vis] / 4  # (visible joints, 2) in cells
    border = (decoded[vis] < 4) | (decoded[vis] > 60)  # a border cell has one neighbour: no shift there
    assert err[~border].max() <= 0.25 + 1e-5 and err[border].max() <= 0.5 + 1e-5
    assert (targets["heatmaps"][~vis] == 0).all()
    plain = HeatmapDataset(base, 16)
    _, t0 = plain[0]
    torch.testing.assert_close(t0["keypoints"], base[0][1]["keypoints"])
    assert t0["torso"].item() == pytest.approx(base[0][1]["torso"])


def test_heatmap_loss_sums_the_stacks_and_pose_step_logs_it():
    target = torch.rand(2, 3, 4, 4)
    outs = [torch.rand(2, 3, 4, 4, requires_grad=True) for _ in range(3)]
    expected = sum(F.mse_loss(o, target) for o in outs)
    torch.testing.assert_close(pose.heatmap_loss(outs, target), expected)
    with pytest.raises(ValueError, match="differ"):
        pose.heatmap_loss([torch.rand(2, 3, 8, 8)], target)

    def model(x):
        return outs

    logs = pose.pose_step(model, (torch.rand(2, 3, 16, 16), {"heatmaps": target}), torch.device("cpu"))
    torch.testing.assert_close(logs["loss"], expected)
    torch.testing.assert_close(logs["loss_last"], F.mse_loss(outs[-1], target))


# ---------------------------------------------------------------- real data
def test_coco_keypoints_without_files_names_stick_figures(tmp_path, monkeypatch):
    paths = (tmp_path / "train2017", tmp_path / "person_keypoints_train2017.json")
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    with pytest.raises(OfflineError, match="StickFigures"):
        CocoKeypoints(*paths)
    monkeypatch.setenv("COURSEKIT_OFFLINE", "0")
    with pytest.raises(FileNotFoundError, match="StickFigures"):
        CocoKeypoints(*paths)


def test_coco_keypoints_crops_a_person_and_moves_the_keypoints_with_it(tmp_path):
    # One 100x80 image, one person box, 17 keypoints: bright pixels at the labelled ones.
    (tmp_path / "images").mkdir()
    pixels = np.zeros((80, 100, 3), np.uint8)
    rng = np.random.default_rng(0)
    xy = np.stack([rng.integers(35, 65, 17), rng.integers(25, 55, 17)], 1)
    labelled = np.arange(17) % 4 != 3
    for (x, y), v in zip(xy, labelled, strict=True):
        pixels[y, x] = 255 if v else 0
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    kps = np.concatenate([xy, np.where(labelled, 2, 0)[:, None]], 1).ravel().tolist()
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 40, 40], "area": 1600.0,
                            "iscrowd": 0, "num_keypoints": int(labelled.sum()), "keypoints": [int(v) for v in kps]}],
           "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = CocoKeypoints(tmp_path / "images", tmp_path / "ann.json", image_size=100, padding=1.25)
    assert len(ds) == 1
    image, target = ds[0]
    assert image.shape == (3, 100, 100) and target["keypoints"].shape == (17, 2)
    assert target["visible"].tolist() == labelled.tolist()
    for k in np.flatnonzero(labelled):  # crop 50x50 -> 100x100: a bright pixel becomes a 2x2 bright patch
        x, y = target["keypoints"][k].round().long().tolist()
        assert image[0, y - 1 : y + 1, x - 1 : x + 1].mean() > 0.5, k


# ---------------------------------------------------------------------------------------------- Keypoint R-CNN
def test_keypoint_rcnn_target_turns_visibility_into_torchvisions_third_column():
    image, target = StickFigures(2, 64, seed=3)[1]
    kr = pose.keypoint_rcnn_target(target)
    K = len(StickFigures.KEYPOINTS)
    assert kr["keypoints"].shape == (1, K, 3) and kr["keypoints"].dtype == torch.float32
    assert torch.equal(kr["keypoints"][0, :, :2], target["keypoints"])
    assert torch.equal(kr["keypoints"][0, :, 2].bool(), target["visible"])
    assert torch.equal(kr["boxes"], target["boxes"]) and torch.equal(kr["labels"], target["labels"])
    with pytest.raises(ValueError, match="visible"):
        pose.keypoint_rcnn_target({k: v for k, v in target.items() if k != "visible"})


def test_torchvision_keypoint_rcnn_trains_on_the_targets_and_predict_reads_one_person_per_image():
    from coursekit.models.torchvision_detection import torchvision_keypoint_rcnn
    from coursekit.train import detection_step

    torch.manual_seed(0)
    K = len(StickFigures.KEYPOINTS)
    model, weights = torchvision_keypoint_rcnn(K, pretrained=False, fpn_channels=16, box_hidden=16,
                                               keypoint_channels=8, keypoint_layers=2)
    assert weights == "random"
    items = [StickFigures(2, 64, seed=4)[i] for i in range(2)]
    batch = ([im for im, _ in items], [pose.keypoint_rcnn_target(t) for _, t in items])
    logs = detection_step(model.train(), batch, torch.device("cpu"))
    assert torch.isfinite(logs["loss_keypoint"]) and logs["loss_keypoint"] > 0
    pred = pose.keypoint_rcnn_predict(model, torch.stack(batch[0]), K, batch_size=1, device="cpu")
    assert pred.shape == (2, K, 2) and model.training  # predicted in eval mode, the mode given back


class _FixedDetector(torch.nn.Module):
    """Returns the given detections whatever the images (a stand-in for a detector in eval mode)."""

    def __init__(self, detections):
        super().__init__()
        self.detections, self.weight = detections, torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return self.detections[: len(images)]


def test_keypoint_rcnn_predict_takes_the_best_person_and_nan_when_nobody_is_found():
    kp = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)  # two people, 3 joints
    found = {"scores": torch.tensor([0.3, 0.9]), "keypoints": kp}
    nobody = {"scores": torch.zeros(0), "keypoints": torch.zeros(0, 3, 3)}
    pred = pose.keypoint_rcnn_predict(_FixedDetector([found, nobody]), torch.zeros(2, 3, 8, 8), 3)
    assert torch.equal(pred[0], kp[1, :, :2]) and pred[1].isnan().all()
    # PCK counts the joints of an image without a detection as wrong
    truth = torch.stack([kp[1, :, :2], kp[1, :, :2]])
    assert pck(pred, truth, torch.ones(2, 3, dtype=torch.bool), 10.0, 0.2) == 0.5


def test_keypoint_rcnn_offline_falls_back_to_the_resnet18_fpn_in_one_line(monkeypatch, capsys):
    from coursekit.models.torchvision_detection import torchvision_keypoint_rcnn

    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    monkeypatch.setattr("coursekit.weights.is_cached", lambda weights: False)  # no COCO file on this disk
    monkeypatch.setattr("coursekit.weights.load_backbone_weights", lambda body, verbose=True: "coursekit-shapes")
    model, weights = torchvision_keypoint_rcnn(15, backbone="resnet50-coco", keypoint_channels=8)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == ["coursekit: COCO Keypoint R-CNN weights unavailable (offline): using a ResNet-18 FPN instead"]
    assert weights == "coursekit-shapes" and model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 15
    assert model.transform.min_size == (64,)
    with pytest.raises(ValueError, match="num_keypoints"):
        torchvision_keypoint_rcnn(0, pretrained=False)
