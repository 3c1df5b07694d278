"""Deep Image Prior: the net's shapes, each task's loss at the clean solution, the fitting loop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from coursekit.dip import (
    DIPConfig,
    add_gaussian_noise,
    bicubic_upsample,
    classical_denoise,
    classical_inpaint,
    denoising_loss,
    downsample,
    fit_dip,
    inpainting_loss,
    random_pixel_mask,
    super_resolution_loss,
    text_mask,
)
from coursekit.models.dip import SkipNet, make_noise


def _image(h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """A smooth random image [1, 3, H, W] in [0, 1] (low-frequency, like a photo, not like noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def _tiny_net(depth: int = 2, in_channels: int = 4) -> SkipNet:
    torch.manual_seed(0)
    return SkipNet(in_channels=in_channels, widths=(8,) * depth, skip_channels=2)


# ---------------------------------------------------------------------------------------------- the net
@pytest.mark.parametrize("depth, size", [(1, (6, 10)), (2, (16, 8)), (3, (24, 32))])
def test_net_maps_noise_to_an_rgb_image_of_the_same_size(depth, size):
    net = _tiny_net(depth)
    out = net(make_noise(4, *size))
    assert out.shape == (1, 3, *size)
    assert 0 <= out.min() and out.max() <= 1  # sigmoid: an image in [0, 1]


def test_net_without_skips_is_a_plain_encoder_decoder():
    net = SkipNet(in_channels=4, widths=(8, 8), skip_channels=0)
    assert net.body.skip is None
    assert net(make_noise(4, 8, 8)).shape == (1, 3, 8, 8)


def test_net_names_the_size_to_crop_or_pad_to():
    net = _tiny_net(depth=3)  # sizes must be multiples of 8
    with pytest.raises(ValueError, match=r"crop the image to 16x24 or pad it to 24x32"):
        net(make_noise(4, 20, 30))


def test_net_rejects_wrong_noise_channels_and_bad_config():
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        _tiny_net()(make_noise(3, 8, 8))
    with pytest.raises(ValueError, match="upsample"):
        SkipNet(upsample="bicubic")
    with pytest.raises(ValueError, match="skip_channels"):
        SkipNet(widths=(8, 8), skip_channels=(4,))


def test_make_noise_is_fixed_small_uniform_noise():
    z = make_noise(32, 8, 8, generator=torch.Generator().manual_seed(1))
    assert z.shape == (1, 32, 8, 8) and 0 <= z.min() and z.max() < 0.1
    assert torch.equal(z, make_noise(32, 8, 8, generator=torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------------------------------------- task losses
def test_denoising_loss_is_zero_at_the_observation_and_positive_at_the_clean_image():
    clean = _image()
    noisy = add_gaussian_noise(clean, 0.1, generator=torch.Generator().manual_seed(0), clip=False)
    loss = denoising_loss(noisy)
    assert loss(noisy).item() == 0
    # At the clean image the MSE is the noise variance (0.1 ** 2): the value early stopping aims near.
    assert loss(clean).item() == pytest.approx(0.01, rel=0.15)


def test_super_resolution_loss_is_zero_for_the_true_high_res_image():
    hr = _image(16, 16)
    lr = downsample(hr, 4)
    assert lr.shape == (1, 3, 4, 4)
    loss = super_resolution_loss(lr, 4)
    assert loss(hr).item() < 1e-12
    # An image that differs only within each 4x4 block (same block means) is just as good: SR is ill-posed.
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 0.02 - 0.01
    assert loss(hr + checker).item() < 1e-12
    assert loss(bicubic_upsample(lr, 4)).item() > 0


def test_downsample_is_the_block_mean():
    img = torch.arange(16.0).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    assert downsample(img, 2)[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    with pytest.raises(ValueError, match="crop it to 4x4"):
        downsample(torch.rand(1, 3, 6, 5), 4)


@pytest.mark.parametrize("make_mask", [lambda: random_pixel_mask(16, 16, 0.5), lambda: text_mask(16, 16)])
def test_inpainting_loss_ignores_the_missing_pixels(make_mask):
    torch.manual_seed(0)
    clean, known = _image(), make_mask()
    assert known.dtype == torch.bool and known.shape == (1, 1, 16, 16) and 0 < known.sum() < 256
    corrupted = clean * known
    loss = inpainting_loss(corrupted, known)
    assert loss(clean).item() == 0
    changed = torch.where(known, clean, torch.rand_like(clean))  # garbage where the pixels are missing
    assert loss(changed).item() == 0
    assert loss(torch.where(known, 1 - clean, clean)).item() > 0  # but a change in a known pixel counts


def _task_losses() -> dict[str, object]:
    clean = _image()
    return {
        "denoising": denoising_loss(clean),
        "inpainting": inpainting_loss(clean, random_pixel_mask(16, 16, 0.5)),
        "super-resolution": super_resolution_loss(downsample(clean, 2), 2),
    }


@pytest.mark.parametrize("task", ["denoising", "inpainting", "super-resolution"])
def test_losses_follow_the_output_to_its_device(task):
    # Found on a GPU: the corrupted image is made on the CPU, fit_dip runs the net on CUDA, and the loss
    # compared the two ("Expected all tensors to be on the same device"). The meta device stands in for
    # CUDA here: a loss that keeps its target on the CPU raises the same error on it.
    loss = _task_losses()[task]
    on_meta = loss(torch.empty(1, 3, 16, 16, device="meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == ()
    assert loss(_image()).device.type == "cpu"  # and back: one copy per device, the CPU one kept


def test_losses_reject_bad_input():
    with pytest.raises(ValueError, match="criterion"):
        denoising_loss(_image(), criterion="huber")
    with pytest.raises(ValueError, match="no pixel as known"):
        inpainting_loss(_image(), torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(_image(), -1.0)


# ---------------------------------------------------------------------------------------------- baselines
def test_classical_baselines_improve_on_the_corrupted_image():
    clean = _image(32, 32)
    mse = lambda x: F.mse_loss(x, clean).item()
    noisy = add_gaussian_noise(clean, 0.1, generator=torch.Generator().manual_seed(0))
    for method in ("nlm", "tv"):
        assert mse(classical_denoise(noisy, 0.1, method)) < mse(noisy) / 2
    known = random_pixel_mask(32, 32, 0.5, generator=torch.Generator().manual_seed(0))
    filled = classical_inpaint(clean * known, known)
    assert torch.equal(filled[known.expand_as(filled)], clean[known.expand_as(clean)])  # keeps what is known
    assert mse(filled) < mse(clean * known) / 10
    assert bicubic_upsample(downsample(clean, 4), 4).shape == clean.shape
    assert bicubic_upsample(downsample(clean[0], 4), 4).shape == clean[0].shape  # [3, H, W] in, [3, H, W] out


# ---------------------------------------------------------------------------------------------- the loop
def test_fit_dip_records_psnr_at_the_requested_iterations_and_leaves_its_inputs_alone():
    clean = _image()
    noisy = add_gaussian_noise(clean, 0.1, generator=torch.Generator().manual_seed(0))
    net, noise = _tiny_net(), make_noise(4, 16, 16)
    before = ({k: v.clone() for k, v in net.state_dict().items()}, noise.clone(), noisy.clone(), clean.clone())
    result = fit_dip(net, noise, denoising_loss(noisy), DIPConfig(n_iters=25, lr=0.01, record_every=10,
                     snapshot_every=5), clean=clean, device="cpu", progress=False)
    assert result.steps == [10, 20, 25] and len(result.losses) == len(result.psnrs) == 3
    assert result.snapshot_steps == [5, 10, 15, 20, 25] and result.snapshots[0].shape == (3, 16, 16)
    assert result.best_psnr == max(result.psnrs) and result.best_step in result.steps
    # The PSNR recorded at the last step is the PSNR of the returned output.
    assert result.psnrs[-1] == pytest.approx(10 * torch.log10(1 / F.mse_loss(result.output, clean)).item())
    state, *tensors = before
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items()), "fit_dip changed the net"
    assert all(torch.equal(a, b) for a, b in zip(tensors, (noise, noisy, clean), strict=True))
    assert result.net is not net


def test_a_tiny_fit_reduces_the_loss_and_the_callback_can_stop_it():
    target = _image()
    net, noise = _tiny_net(), make_noise(4, 16, 16)
    loss_fn = denoising_loss(target)
    start = loss_fn(net.train()(noise)).item()
    config = DIPConfig(n_iters=60, lr=0.02, record_every=20)
    result = fit_dip(net, noise, loss_fn, config, device="cpu", progress=False)
    assert result.losses[-1] < start / 4 and result.psnrs == []
    seen: list[int] = []
    stopped = fit_dip(net, noise, loss_fn, replace(config, record_every=10), device="cpu", progress=False,
                      callback=lambda step, out, loss: seen.append(step) or step >= 20)
    assert seen == [10, 20] and stopped.steps == [10, 20]


def test_dip_config_rejects_bad_settings_when_built():
    for bad, word in [({"optimizer": "rmsprop"}, "optimizer"), ({"n_iters": 0}, "n_iters"), ({"lr": 0}, "lr"),
                      ({"record_every": 0}, "record_every"), ({"snapshot_every": 0}, "snapshot_every"),
                      ({"reg_noise_std": -1}, "reg_noise_std"), ({"ema": 1.0}, "ema")]:
        with pytest.raises(ValueError, match=word):
            DIPConfig(**{"n_iters": 1, **bad})
    assert DIPConfig(1, optimizer=torch.optim.RMSprop).optimizer is torch.optim.RMSprop  # a class is accepted
    net, noise, loss_fn = _tiny_net(), make_noise(4, 8, 8), denoising_loss(_image(8, 8))
    with pytest.raises(ValueError, match="DIPConfig"):
        fit_dip(net, noise, loss_fn, 1, device="cpu", progress=False)


def test_the_config_decides_the_fit():
    """Same config, same seed: the same fit; SGD instead of Adam: another one."""
    net, noise, loss_fn = _tiny_net(), make_noise(4, 8, 8), denoising_loss(_image(8, 8))
    config = DIPConfig(n_iters=5, lr=0.01, reg_noise_std=0.05, ema=0.5, record_every=5)
    runs = []
    for cfg in (config, config, replace(config, optimizer="sgd")):
        torch.manual_seed(0)
        runs.append(fit_dip(net, noise, loss_fn, cfg, device="cpu", progress=False).output)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
