"""Tests of coursekit.models.segmentation: one smoke test over every registered model, then what each
architecture is supposed to do (skips used, argmax remembered, atrous receptive field, bilinear init)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coursekit.models import create_model, list_models, register_model
from coursekit.models import segmentation as seg
from coursekit.ops import max_unpool2d
from coursekit.receptive_field import empirical_receptive_field, layers_of, receptive_field
from coursekit.train import count_parameters

NUM_CLASSES = 5


def _build(name: str, **kw) -> nn.Module:
    if name.startswith("smp_"):
        kw.setdefault("pretrained", False)  # no download, no pretraining in a unit test
    return create_model(name, NUM_CLASSES, **kw)


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_every_model_maps_images_to_per_pixel_class_scores(name):
    torch.manual_seed(0)
    model = _build(name)
    x = torch.rand(2, 3, 64, 64)  # batch 2: BatchNorm after smp's ASPP pooling needs > 1 value per channel
    out = model(x)
    assert out.shape == (2, NUM_CLASSES, 64, 64)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: a parameter got no gradient"
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 96, 64)).shape == (1, NUM_CLASSES, 96, 64)  # non-square inputs too


def test_factory_lists_every_architecture_of_the_lecture():
    names = list_models("segmentation")
    for name in ("naive", "encoder_decoder", "fcn32s", "fcn16s", "fcn8s", "unet", "segnet", "deeplab",
                 "smp_unet", "smp_deeplabv3plus"):
        assert name in names


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unet.*deeplab|choose one of"):
        create_model("unet3000", 3)
    with pytest.raises(ValueError) as err:
        create_model("unet3000", 3)
    assert all(name in str(err.value) for name in list_models("segmentation"))


def test_bad_input_size_names_the_padded_size():
    with pytest.raises(ValueError, match="96x96"):
        create_model("fcn8s", 3)(torch.rand(1, 3, 70, 70))
    with pytest.raises(ValueError, match="variant"):
        seg.FCN(3, variant=4)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("unet", 0)


def test_register_model_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        register_model("unet", seg.UNet, family="segmentation")


@pytest.mark.parametrize("variant, uses_pool3, uses_pool4", [(32, False, False), (16, False, True), (8, True, True)])
def test_fcn_reads_exactly_its_skip_features(variant, uses_pool3, uses_pool4):
    torch.manual_seed(0)
    model = seg.FCN(NUM_CLASSES, variant).eval()
    for conv in model.score_skips:  # the paper starts them at zero: make them matter for the test
        nn.init.normal_(conv.weight)
    with torch.no_grad():
        pools = model.encoder(torch.rand(1, 3, 64, 64))
        base = model.decode(pools)
        for index, used in ((2, uses_pool3), (3, uses_pool4)):  # pool3 (1/8), pool4 (1/16)
            changed = list(pools)
            changed[index] = pools[index] + torch.randn_like(pools[index])
            assert (not torch.allclose(model.decode(changed), base)) == used


def test_fcn8s_output_changes_when_only_a_pool3_pixel_changes_and_only_near_it():
    torch.manual_seed(0)
    model = seg.FCN(NUM_CLASSES, 8).eval()
    nn.init.normal_(model.score_skips[1].weight)  # score_pool3
    with torch.no_grad():
        pools = model.encoder(torch.rand(1, 3, 64, 64))
        changed = [p.clone() for p in pools]
        changed[2][0, :, 1, 1] += 10.0  # one pixel of pool3 (8x8 map): input pixels 8..15
        diff = (model.decode(changed) - model.decode(pools)).abs().sum(dim=(0, 1))  # (64, 64)
    rows = diff.sum(1).nonzero().flatten()
    assert rows.numel() > 0
    assert rows.min() >= 8 - 4 and rows.max() < 16 + 4  # the x8 bilinear kernel spreads it 4 px each side


def test_fcn_upsampling_starts_as_bilinear_interpolation():
    up = seg.bilinear_upsample(2, 4)
    x = torch.rand(1, 2, 6, 6)
    ours = up(x)
    ref = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # the border differs (zero padding)
    torch.testing.assert_close(ours[inner], ref[inner])
    assert seg.bilinear_kernel(2).tolist()[0] == pytest.approx([0.0625, 0.1875, 0.1875, 0.0625])


def test_unet_skip_connections_carry_full_resolution_detail():
    torch.manual_seed(0)
    model = seg.UNet(NUM_CLASSES, widths=(8, 16, 32)).eval()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    model(x)[0, :, 16, 16].sum().backward()
    # the first block's 3x3 convs twice, the last block's twice: the finest path sees about 9x9 pixels,
    # but the output must also depend on far pixels through the bottleneck
    assert x.grad[0, :, 16, 16].abs().sum() > 0
    assert x.grad[0, :, 2, 2].abs().sum() > 0
    assert isinstance(model.head, nn.Conv2d) and model.head.kernel_size == (1, 1)


def test_segnet_decoder_unpools_to_the_remembered_argmax():
    # ours equals torch's max_unpool2d: SegNet's decoder could use either
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    pooled, idx = F.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(max_unpool2d(pooled, idx, 2), F.max_unpool2d(pooled, idx, 2))
    # the first decoder stage puts values exactly where the encoder's last pool found them
    model = seg.SegNet(NUM_CLASSES, widths=(4, 8)).eval()
    seen = {}
    model.decoder[1].register_forward_pre_hook(lambda m, inp: seen.setdefault("unpooled", inp[0]))
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16))
    nonzero_per_window = (seen["unpooled"] != 0).float().unflatten(2, (4, 2)).unflatten(4, (4, 2)).sum((3, 5))
    assert nonzero_per_window.max() <= 1  # at most one value per 2x2 window: the remembered max


def test_atrous_convolution_grows_the_receptive_field_with_the_same_parameters():
    plain, atrous = seg.dilated_stack((1, 1, 1)), seg.dilated_stack((1, 2, 4))
    assert count_parameters(plain) == count_parameters(atrous)
    assert empirical_receptive_field(plain, 41) == 7  # 1 + 2 * 3
    assert empirical_receptive_field(atrous, 41) == 15  # 1 + 2 * (1 + 2 + 4)
    assert receptive_field(layers_of(atrous))[-1][1] == 15


def test_deeplab_keeps_output_stride_8_and_upsamples_bilinearly():
    model = seg.DeepLab(NUM_CLASSES).eval()
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    assert feats.shape[-2:] == (8, 8)
    dilations = [m.dilation for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert (2, 2) in dilations
    aspp_dilations = {m.dilation[0] for m in model.aspp.modules() if isinstance(m, nn.Conv2d)}
    assert {2, 4, 6} <= aspp_dilations


def test_naive_and_encoder_decoder_have_the_same_parameters():
    naive, hourglass = create_model("naive", 3), create_model("encoder_decoder", 3)
    assert count_parameters(naive) == count_parameters(hourglass)


def test_smp_builder_returns_a_normalising_wrapper_around_the_smp_model():
    model = seg.smp_unet(NUM_CLASSES, pretrained=False)
    assert type(model.net).__name__ == "Unet"
    assert model.mean.shape == (1, 3, 1, 1)
