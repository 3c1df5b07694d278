"""coursekit.data: generated datasets (determinism, target consistency), samples, loaders' offline path."""

import math
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.ops import masks_to_boxes

from coursekit import data
from coursekit.data import (
    FLIP_PAIRS,
    KEYPOINTS,
    SKELETON,
    DigitScenes,
    OfflineError,
    Shapes,
    StickFigures,
    _render,
    collate,
    hflip,
    real,
)

SIZE = 64  # small scenes keep the file fast; 128 px is measured in the speed check of the report
DATASETS = {
    "shapes": lambda **kw: Shapes(n=30, image_size=SIZE, **kw),
    "digits": lambda **kw: DigitScenes(n=30, image_size=SIZE, scale_range=(12, 28), **kw),
    "figures": lambda **kw: StickFigures(n=30, image_size=SIZE, **kw),
}


def _equal(a, b) -> bool:
    if torch.is_tensor(a):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _reference_boxes(masks: torch.Tensor) -> torch.Tensor:
    """torchvision's boxes (x2 = last column) shifted to the course convention (x2 = last column + 1)."""
    return masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])


# --------------------------------------------------------------------------- all generated datasets
@pytest.mark.parametrize("name", DATASETS)
def test_items_are_a_function_of_seed_and_index(name):
    a, b, other = DATASETS[name](seed=3), DATASETS[name](seed=3), DATASETS[name](seed=4)
    image, target = a[5]
    for again_image, again_target in (a[5], b[5]):
        assert torch.equal(image, again_image)
        assert target.keys() == again_target.keys()
        assert all(_equal(target[k], again_target[k]) for k in target)
    assert not torch.equal(image, other[5][0])
    assert not torch.equal(image, a[6][0])
    assert torch.equal(a[-1][0], a[len(a) - 1][0])


def test_different_datasets_do_not_share_backgrounds():
    first = [DATASETS[name]()[0][0] for name in DATASETS]
    assert (first[0] - first[1]).abs().mean() > 0.05 and (first[0] - first[2]).abs().mean() > 0.05


@pytest.mark.parametrize("name", DATASETS)
def test_item_format_and_boxes_are_tight_boxes_of_visible_masks(name):
    dataset = DATASETS[name]()
    assert dataset.num_classes == len(dataset.CLASSES) and dataset.CLASSES[0] == "background"
    for i in range(12):
        image, target = dataset[i]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        N = len(labels)
        assert boxes.shape == (N, 4) and boxes.dtype == torch.float32
        assert labels.dtype == torch.int64 and masks.shape == (N, SIZE, SIZE) and masks.dtype == torch.uint8
        assert ((labels >= 1) & (labels < dataset.num_classes)).all()
        assert set(masks.unique().tolist()) <= {0, 1} and (masks.flatten(1).sum(1) > 0).all()
        assert torch.equal(boxes, _reference_boxes(masks.bool()))
        assert torch.equal(target["area"], masks.flatten(1).sum(1).float())
        assert target["image_id"] == i


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_semantic_map_agrees_with_disjoint_instance_masks(name):
    dataset = DATASETS[name]()
    for i in range(12):
        _, target = dataset[i]
        masks = target["masks"].long()
        assert masks.sum(0).max() <= 1, "visible masks overlap"
        expected = (masks * target["labels"][:, None, None]).sum(0)
        assert target["semantic"].dtype == torch.int64
        assert torch.equal(target["semantic"], expected)


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_scene_counts_respect_min_and_max_objects(name):
    dataset = DATASETS[name](min_objects=2, max_objects=3)
    counts = [len(dataset[i][1]["labels"]) for i in range(len(dataset))]
    assert min(counts) >= 2 and max(counts) <= 3 and len(set(counts)) == 2


# --------------------------------------------------------------------------- occlusion bookkeeping
def test_scene_stack_z_order_and_occlusion_rule():
    H = W = 10
    stack = _render.SceneStack(H, W, min_visible=0.4)
    back = np.zeros((H, W), bool)
    back[0:6, 0:6] = True  # 36 px
    front = np.zeros((H, W), bool)
    front[3:9, 3:9] = True  # hides 9 px of back: 75% stays visible
    hides_most = np.zeros((H, W), bool)
    hides_most[0:6, 0:5] = True
    stack.add(back, 1)
    assert stack.fits(front)
    stack.add(front, 2)
    target = stack.target()
    assert target["masks"][0].sum() == 27 and target["masks"][1].sum() == 36  # the later one is whole
    assert target["semantic"][4, 4] == 2 and target["semantic"][1, 1] == 1 and target["semantic"][9, 0] == 0
    assert not stack.fits(hides_most)  # back would keep 3 of 36 px visible
    assert not stack.fits(np.zeros((H, W), bool))


def test_shapes_scenes_contain_real_occlusions():
    dataset = Shapes(n=40, image_size=SIZE, min_objects=3, max_objects=4, seed=1)
    touching = 0
    for i in range(len(dataset)):
        masks = dataset[i][1]["masks"].bool()
        grown = F.max_pool2d(masks[:, None].float(), 3, 1, 1)[:, 0].bool()  # masks touch if dilated ones meet
        touching += int((grown.sum(0) > 1).any())
    assert touching >= 5


def test_empty_scenes_have_well_formed_targets():
    _, target = Shapes(n=2, image_size=SIZE, min_objects=0, max_objects=1, seed=0)[0]
    for i in range(2):
        _, target = Shapes(n=2, image_size=SIZE, min_objects=0, max_objects=1, seed=0)[i]
        assert target["boxes"].shape[1] == 4 and target["masks"].shape[1:] == (SIZE, SIZE)
    stack = _render.SceneStack(8, 8)
    empty = stack.target()
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 8, 8)
    assert empty["labels"].shape == (0,)


# --------------------------------------------------------------------------- Shapes
def test_shapes_class_subset_renumbers_labels_and_draws_the_right_kind():
    assert Shapes.CLASSES == ("background", "circle", "square", "triangle", "star", "hexagon", "cross")
    dataset = Shapes(n=40, image_size=SIZE, max_objects=1, classes=("star", "circle"), min_size=20)
    assert dataset.CLASSES == ("background", "star", "circle") and dataset.num_classes == 3
    seen = set()
    for i in range(len(dataset)):
        _, target = dataset[i]
        (label,), (x1, y1, x2, y2) = target["labels"].tolist(), target["boxes"][0].tolist()
        fill = target["masks"][0].sum().item() / ((x2 - x1) * (y2 - y1))  # mask area / box area
        if label == 2:  # a circle fills pi/4 of its box, a 5-pointed star at most ~0.4
            assert abs(fill - math.pi / 4) < 0.08 and abs((x2 - x1) - (y2 - y1)) <= 1
        else:
            assert fill < 0.5
        seen.add(label)
    assert seen == {1, 2}


def test_shapes_backgrounds_and_sizes():
    plain = Shapes(n=3, image_size=SIZE, background="plain", max_objects=1, seed=2)
    image, target = plain[0]
    outside = target["masks"].sum(0) == 0
    assert image[:, outside].std(dim=1).max() < 0.05  # one colour plus sensor noise
    big = Shapes(n=10, image_size=SIZE, min_size=30, max_size=32, max_objects=1)
    for i in range(len(big)):
        x1, y1, x2, y2 = big[i][1]["boxes"][0].tolist()
        assert 12 <= max(x2 - x1, y2 - y1) <= 33


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": -3},
        {"n": 2.5},
        {"image_size": 16},
        {"image_size": (64, 20)},
        {"classes": ("circle", "ellipse")},
        {"classes": ("circle", "circle")},
        {"classes": ()},
        {"min_objects": 3, "max_objects": 2},
        {"max_objects": 0},
        {"min_size": 40, "max_size": 20},
        {"max_size": 65},
        {"background": "sky"},
        {"seed": -1},
    ],
)
def test_shapes_bad_arguments_raise_value_error(kwargs):
    args = {"n": 5, "image_size": SIZE} | kwargs
    with pytest.raises(ValueError):
        Shapes(**args)


def test_bad_arguments_of_other_datasets_and_bad_indices():
    for make in (
        lambda: DigitScenes(n=0),
        lambda: DigitScenes(image_size=20),
        lambda: DigitScenes(split="val"),
        lambda: DigitScenes(image_size=SIZE, scale_range=(4, 20)),
        lambda: DigitScenes(image_size=SIZE, scale_range=(30, 20)),
        lambda: DigitScenes(image_size=SIZE, scale_range=(30, 80)),
        lambda: StickFigures(n=-1),
        lambda: StickFigures(image_size=8),
        lambda: StickFigures(occlusion="yes"),
    ):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError, match="sky"):
        Shapes(background="sky")
    dataset = Shapes(n=3, image_size=SIZE)
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(IndexError):
        dataset[-4]
    assert len(list(iter(dataset))) == 3  # plain iteration stops at IndexError


# --------------------------------------------------------------------------- DigitScenes
def test_digit_scenes_use_disjoint_glyphs_and_labels_are_digit_plus_one():
    _, digits = data.digits()
    used = {}
    for split in ("train", "test"):
        dataset = DigitScenes(n=25, image_size=SIZE, scale_range=(12, 28), split=split, seed=0)
        ids = []
        for i in range(len(dataset)):
            _, target = dataset[i]
            assert torch.equal(target["labels"], digits[target["digit_ids"]] + 1)
            ids += target["digit_ids"].tolist()
        used[split] = set(ids)
    assert DigitScenes.CLASSES == ("background", *"0123456789")
    assert used["train"] and used["test"] and not used["train"] & used["test"]
    assert max(used["train"]) < 1500 <= min(used["test"])


# --------------------------------------------------------------------------- StickFigures
def test_stick_figure_constants_are_consistent():
    assert len(KEYPOINTS) == 15 and StickFigures.KEYPOINTS is KEYPOINTS
    for name in ("neck", "elbow", "wrist", "knee", "ankle"):
        assert name in KEYPOINTS or ("r_" + name in KEYPOINTS and "l_" + name in KEYPOINTS)
    assert all(0 <= i < 15 and 0 <= j < 15 for i, j in SKELETON)
    for i, j in FLIP_PAIRS:
        assert KEYPOINTS[i].startswith("r_") and KEYPOINTS[j] == "l_" + KEYPOINTS[i][2:]
    assert len(FLIP_PAIRS) == sum(k.startswith("r_") for k in KEYPOINTS)


def test_stick_figure_keypoints_visibility_and_normalisers():
    dataset = StickFigures(n=40, image_size=SIZE, seed=1)
    hidden_inside = 0
    for i in range(len(dataset)):
        _, target = dataset[i]
        kp, vis, mask = target["keypoints"], target["visible"], target["masks"][0]
        assert kp.shape == (15, 2) and kp.dtype == torch.float32
        assert vis.shape == (15,) and vis.dtype == torch.bool
        assert target["labels"].tolist() == [1] and target["boxes"].shape == (1, 4)
        inside = (kp[:, 0] >= 0) & (kp[:, 0] < SIZE) & (kp[:, 1] >= 0) & (kp[:, 1] < SIZE)
        assert not (vis & ~inside).any()
        # a visible joint lies on the drawn, unoccluded figure: its pixel is in the visible mask
        cols, rows = kp[vis, 0].long(), kp[vis, 1].long()
        assert mask[rows, cols].all()
        hidden_inside += int((inside & ~vis).sum())
        neck, pelvis = kp[KEYPOINTS.index("neck")], kp[KEYPOINTS.index("pelvis")]
        assert isinstance(target["torso"], float)
        assert target["torso"] == pytest.approx((neck - pelvis).norm().item())
        assert 0 < target["head"] < target["torso"]
    assert hidden_inside > 10  # the occluder really hides joints


def test_stick_figures_without_occlusion_hide_only_joints_outside_the_image():
    dataset = StickFigures(n=30, image_size=SIZE, occlusion=False, seed=2)
    outside_seen = 0
    for i in range(len(dataset)):
        kp, vis = dataset[i][1]["keypoints"], dataset[i][1]["visible"]
        inside = (kp[:, 0] >= 0) & (kp[:, 0] < SIZE) & (kp[:, 1] >= 0) & (kp[:, 1] < SIZE)
        assert torch.equal(vis, inside)
        outside_seen += int((~inside).sum())
    assert outside_seen > 0  # cut-off figures occur


# --------------------------------------------------------------------------- transforms
def test_hflip_moves_boxes_masks_and_swaps_left_right_joints():
    image, target = StickFigures(n=4, image_size=SIZE, seed=5)[1]
    flipped_image, flipped = hflip(image, target, FLIP_PAIRS)
    assert torch.equal(flipped_image, image.flip(-1))
    assert torch.equal(flipped["boxes"], _reference_boxes(flipped["masks"].bool()))
    r, l = KEYPOINTS.index("r_wrist"), KEYPOINTS.index("l_wrist")
    x, y = target["keypoints"][l]
    assert torch.allclose(flipped["keypoints"][r], torch.stack([SIZE - x, y]))
    assert flipped["visible"][r] == target["visible"][l]
    vis = flipped["visible"]
    assert flipped["masks"][0][flipped["keypoints"][vis, 1].long(), flipped["keypoints"][vis, 0].long()].all()
    back_image, back = hflip(flipped_image, flipped, FLIP_PAIRS)
    assert torch.equal(back_image, image) and torch.allclose(back["keypoints"], target["keypoints"])
    assert torch.equal(back["visible"], target["visible"]) and torch.equal(back["boxes"], target["boxes"])
    assert target["keypoints"] is not flipped["keypoints"]  # the input was not modified


def test_hflip_of_shapes_scene_and_random_flip_is_seeded():
    image, target = Shapes(n=2, image_size=(48, 80))[0]
    _, flipped = hflip(image, target)
    assert torch.equal(flipped["boxes"], _reference_boxes(flipped["masks"].bool()))
    assert torch.equal(flipped["semantic"], target["semantic"].flip(-1))
    flips = [data.RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    outcomes = [[torch.equal(f(image, target)[0], image) for _ in range(20)] for f in flips]
    assert outcomes[0] == outcomes[1] and 0 < sum(outcomes[0]) < 20
    with pytest.raises(ValueError):
        data.RandomHorizontalFlip(1.5)


def test_collate_stacks_same_size_images_and_keeps_targets_as_list():
    loader = DataLoader(Shapes(n=6, image_size=SIZE), batch_size=4, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, SIZE, SIZE) and len(targets) == 4 and targets[2]["image_id"] == 2
    mixed = [Shapes(n=1, image_size=SIZE)[0], Shapes(n=1, image_size=(SIZE, 48))[0]]
    images, targets = collate(mixed)
    assert isinstance(images, list) and [im.shape[-1] for im in images] == [SIZE, 48]
    with pytest.raises(ValueError):
        collate([])


# --------------------------------------------------------------------------- helpers vs torch
@pytest.mark.parametrize("shape_in,shape_out", [((8, 8), (30, 30)), ((10, 7), (23, 41)), ((40, 40), (13, 9))])
def test_resize_bilinear_matches_torch_interpolate(shape_in, shape_out):
    img = np.random.default_rng(0).random((*shape_in, 3), dtype=np.float32)
    ours = _render.resize_bilinear(img, *shape_out)
    theirs = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=shape_out, mode="bilinear",
                           align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_boxes_from_masks_matches_torchvision_on_random_and_edge_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((20, 17, 23)) < 0.05
    masks[0] = False
    masks[0, 0, 0] = True  # one pixel in the corner
    masks[1] = False
    masks[1, -1, :] = True  # the last row, full width
    masks[2] = True  # everything
    masks[3] = False
    masks[3, 5, 22] = masks[3, 16, 0] = True  # two far-apart pixels on the borders
    masks[masks.reshape(20, -1).sum(1) == 0, 8, 8] = True  # none empty
    ours = torch.from_numpy(_render.boxes_from_masks(masks))
    assert torch.equal(ours, _reference_boxes(torch.from_numpy(masks)))
    assert ours[2].tolist() == [0, 0, 23, 17]


# --------------------------------------------------------------------------- real pictures in wheels
def test_sample_images_all_load_as_float_rgb():
    assert len(data.SAMPLE_IMAGES) == 9
    for name in data.SAMPLE_IMAGES:
        image = data.sample_image(name)
        assert image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.float32, name
        assert 0 <= image.min() and image.max() <= 1 and image.max() > 0.5, name
    camera = data.sample_image("camera")
    assert camera.shape == (3, 512, 512) and torch.equal(camera[0], camera[2])
    assert data.sample_image("china").shape == (3, 427, 640)
    with pytest.raises(ValueError, match="astronaut"):
        data.sample_image("lena")


def test_lfw_faces_and_digits():
    images, labels = data.lfw_faces()
    assert images.shape == (200, 1, 25, 25) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels[:100].eq(1).all() and labels[100:].eq(0).all()
    images, labels = data.digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32 and images.max() == 1
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))


# --------------------------------------------------------------------------- real datasets, offline
@pytest.mark.parametrize(
    "load,name",
    [
        (lambda root: data.penn_fudan(root), "Penn-Fudan"),
        (lambda root: data.oxford_pet(root, "trainval"), "Oxford-IIIT Pet"),
        (lambda root: data.voc_detection(root, "2012", "train"), "PASCAL VOC 2012 detection"),
        (lambda root: data.voc_segmentation(root, "2012", "val"), "PASCAL VOC 2012 segmentation"),
    ],
)
def test_real_loaders_offline_raise_one_clear_error(load, name, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        load(tmp_path)
    message = str(info.value)
    assert name in message and "offline use coursekit.data." in message
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert isinstance(info.value, RuntimeError)


def test_failed_download_becomes_offline_error_without_chain(monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "0")
    monkeypatch.setattr(real, "is_reachable", lambda host, port=443, timeout=0: True)

    def download():
        raise URLError("name resolution failed")

    with pytest.raises(OfflineError, match="URLError") as info:
        real._online("Penn-Fudan", real.PENN_FUDAN_URL, "coursekit.data.Shapes(...)", download)
    assert info.value.__suppress_context__
    monkeypatch.setattr(real, "is_reachable", lambda host, port=443, timeout=0: False)
    with pytest.raises(OfflineError, match="cannot be reached"):
        real._online("Penn-Fudan", real.PENN_FUDAN_URL, "coursekit.data.Shapes(...)", download)


def test_bad_split_raises_value_error_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    with pytest.raises(ValueError):
        data.oxford_pet(tmp_path, "validation")
    with pytest.raises(ValueError):
        data.voc_detection(tmp_path, "2012", "test")


def test_penn_fudan_uses_files_already_under_root(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    folder = tmp_path / "PennFudanPed"
    (folder / "PNGImages").mkdir(parents=True)
    (folder / "PedMasks").mkdir()
    ids = np.zeros((20, 30), np.uint8)
    ids[2:10, 3:8] = 1  # person 1: rows 2..9, cols 3..7
    ids[5:19, 20:30] = 2  # person 2 touches the right and bottom borders
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(folder / "PNGImages" / "FudanPed00001.png")
    Image.fromarray(ids).save(folder / "PedMasks" / "FudanPed00001_mask.png")
    dataset = data.penn_fudan(tmp_path)
    image, target = dataset[0]
    assert len(dataset) == 1 and image.shape == (3, 20, 30) and image.max() == pytest.approx(200 / 255)
    assert target["boxes"].tolist() == [[3, 2, 8, 10], [20, 5, 30, 19]]
    assert target["labels"].tolist() == [1, 1] and target["masks"].shape == (2, 20, 30)
    assert torch.equal(target["boxes"], _reference_boxes(target["masks"].bool()))


def test_voc_detection_uses_files_under_root_and_converts_boxes(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("ImageSets/Main", "JPEGImages", "Annotations"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets/Main/train.txt").write_text("a\n")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(voc / "JPEGImages/a.jpg")
    (voc / "Annotations/a.xml").write_text(
        "<annotation><filename>a.jpg</filename><object><name>dog</name><difficult>1</difficult>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    image, target = data.voc_detection(tmp_path, "2012", "train")[0]
    assert image.shape == (3, 30, 40)
    # VOC's 1-based inclusive corners (1, 2, 10, 20) cover columns 0..9 and rows 1..19
    assert target["boxes"].tolist() == [[0, 1, 10, 20]]
    assert target["labels"].tolist() == [data.VOC_CLASSES.index("dog")]
    assert target["difficult"].tolist() == [True]
