"""Semantic segmentation networks from scratch: naive all-conv, FCN-32s/16s/8s, U-Net, SegNet, DeepLab.

Taught in notebook ``06_semantic_segmentation`` (decks 000, 001, 002, 004). Every model maps an image batch
``Tensor[B, 3, H, W]`` to per-pixel class scores ``Tensor[B, num_classes, H, W]`` (logits; the loss is
cross-entropy per pixel). What each one shows, as the lecture draws it::

    naive           conv ─ conv ─ ... ─ conv            every layer at full resolution (deck 000: too costly)
    encoder_decoder conv ─ pool ─ ... ─ up ─ conv       the hourglass: same layers, far less memory
    fcn32s          VGG-like ─ pool5 (1/32) ─ 1x1 scores ─ transposed conv x32 (learned, bilinear init)
    fcn16s / 8s     + scores of pool4 (1/16) / pool3 (1/8) added after each x2 upsampling: the skips
    unet            contracting path ─ bottleneck ─ expanding path (2x2 up-conv, concat skip, 2 convs) ─ 1x1
    segnet          encoder remembers max-pool argmax ─ decoder max-unpools to those positions
    deeplab         output stride 8: later convs dilated (atrous) instead of pooled, ASPP, bilinear x8

:func:`coursekit.models.create_model` builds any of them by name (``create_model("unet", num_classes=7)``;
``list_models("segmentation")``), including
segmentation-models-pytorch's ``Unet`` and ``DeepLabV3Plus`` on a ResNet-18 encoder (:func:`smp_unet`,
:func:`smp_deeplabv3plus`). The course's sizes are small (16-128 channels, 64-96 px) so that all of them
train on a laptop CPU within a lecture; the papers use VGG-16 / ResNet-101 at 500 px.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.models.blocks import conv_bn_act
from coursekit.models.registry import Smoke, images, register_model

__all__ = [
    "NaiveFullRes",
    "EncoderDecoder",
    "FCN",
    "UNet",
    "SegNet",
    "ASPP",
    "DeepLab",
    "bilinear_kernel",
    "bilinear_upsample",
    "dilated_stack",
    "smp_unet",
    "smp_deeplabv3plus",
]

DEFAULT_WIDTHS = (16, 32, 64, 128, 128)  # channels of the five VGG-like stages (VGG-16: 64 ... 512)


# ---------------------------------------------------------------------------------------------- blocks
def _double_conv(c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU: one stage of VGG, U-Net and SegNet."""
    return nn.Sequential(conv_bn_act(c_in, c_out, dilation=dilation), conv_bn_act(c_out, c_out, dilation=dilation))


def _check_input(x: Tensor, multiple: int, name: str) -> None:
    """Raise ValueError unless ``x`` is ``[B, C, H, W]`` with H and W divisible by ``multiple`` (smp style:
    say which padded size would work)."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects a batch Tensor[B, 3, H, W], got shape {list(x.shape)}")
    H, W = x.shape[-2:]
    if H % multiple or W % multiple:
        new_h, new_w = -(-H // multiple) * multiple, -(-W // multiple) * multiple
        raise ValueError(
            f"{name} needs H and W divisible by {multiple}, got {H}x{W}; pad the input to {new_h}x{new_w} "
            f"(e.g. F.pad(x, (0, {new_w - W}, 0, {new_h - H}))) or resize it"
        )


def _check_widths(widths: Sequence[int], minimum: int, name: str) -> tuple[int, ...]:
    widths = tuple(widths)
    if len(widths) < minimum or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"{name} needs at least {minimum} positive channel widths, got {widths!r}")
    return widths


def bilinear_kernel(factor: int) -> Tensor:
    """The ``2f x 2f`` filter with which a stride-``f`` transposed convolution is bilinear upsampling.

    FCN initialises its learnable upsampling with it (``ConvTranspose2d(k=2f, stride=f, padding=f/2)``):
    away from the border the result equals ``F.interpolate(x, scale_factor=f, mode="bilinear")``, and
    training may then improve on it. Returns ``Tensor[2f, 2f]``, a tent ``1 - |d| / f`` in each axis.
    """
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    size = 2 * factor
    centre = factor - 0.5  # the kernel is even-sized: its centre falls between two taps
    tent = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return tent[:, None] * tent[None, :]


def bilinear_upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable x``factor`` upsampling ``[B, C, H, W] -> [B, C, fH, fW]`` that starts as bilinear
    (each channel upsampled on its own: the off-diagonal filters start at zero)."""
    if factor % 2 and factor != 1:
        raise ValueError(f"use an even upsampling factor (or 1), got {factor}")
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        for c in range(channels):
            up.weight[c, c] = bilinear_kernel(factor)
    return up


def dilated_stack(dilations: Sequence[int], channels: int = 1) -> nn.Sequential:
    """3x3 convolutions, one per entry of ``dilations``: ``[B, C, H, W] -> [B, C, H, W]``.

    A 3x3 conv with dilation ``d`` spaces its 9 taps ``d`` pixels apart: the same 9 weights cover
    ``2d + 1`` pixels. ``dilated_stack((1, 1, 1))`` sees 7x7 pixels, ``dilated_stack((1, 2, 4))`` 15x15,
    with exactly the same number of parameters (deck 004: "increase receptive field without increase in
    parameters"). Measure it with :func:`coursekit.receptive_field.empirical_receptive_field`.
    """
    if not dilations or not all(isinstance(d, int) and d >= 1 for d in dilations):
        raise ValueError(f"dilations must be positive ints, got {dilations!r}")
    return nn.Sequential(*[nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations])


# ------------------------------------------------------------------------------- naive vs hourglass
class NaiveFullRes(nn.Module):
    """Deck 000's naive segmenter: 3x3 conv-BN-ReLU layers of ``widths`` channels, all at full resolution,
    then a 1x1 conv to classes. ``[B, 3, H, W] -> [B, num_classes, H, W]``.

    It works in principle, but every layer stores an ``H x W x width`` activation, and its receptive field
    grows by only 2 pixels per layer (``2 * len(widths) + 1`` in all).
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 128, 64, 32), in_channels: int = 3):
        super().__init__()
        widths = _check_widths(widths, 1, "NaiveFullRes")
        chans = (in_channels, *widths)
        self.body = nn.Sequential(*[conv_bn_act(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        self.head = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 1, "NaiveFullRes")
        return self.head(self.body(x))


class EncoderDecoder(nn.Module):
    """The hourglass with the *same layers* as :class:`NaiveFullRes` (hence the same parameters): the first
    half of the convs are each followed by a 2x2 max pool, the second half each preceded by a nearest x2
    upsampling. ``[B, 3, H, W] -> [B, num_classes, H, W]``, H and W divisible by ``2**(len(widths) // 2)``.

    Activations shrink 4x per pooled layer and the receptive field doubles its growth rate each time.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 128, 64, 32), in_channels: int = 3):
        super().__init__()
        widths = _check_widths(widths, 2, "EncoderDecoder")
        chans = (in_channels, *widths)
        self.n_down = len(widths) // 2
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            if self.n_down <= i < 2 * self.n_down:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))  # no parameters
            layers.append(conv_bn_act(a, b))
            if i < self.n_down:
                layers.append(nn.MaxPool2d(2))  # no parameters
        # modules, not F.max_pool2d: receptive_field.layers_of / empirical_receptive_field can then see them
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 2**self.n_down, "EncoderDecoder")
        return self.head(self.body(x))  # (B, num_classes, H, W)


# ---------------------------------------------------------------------------------------------- FCN
class _VGGEncoder(nn.Module):
    """Five stages of (two 3x3 conv-BN-ReLU, 2x2 max pool): ``forward`` returns ``[pool1, ..., pool5]``,
    the feature maps at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input (VGG-16 in miniature)."""

    def __init__(self, widths: Sequence[int], in_channels: int = 3):
        super().__init__()
        chans = (in_channels, *widths)
        self.stages = nn.ModuleList([_double_conv(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])

    def forward(self, x: Tensor) -> list[Tensor]:
        pools = []
        for stage in self.stages:
            x = F.max_pool2d(stage(x), 2)
            pools.append(x)
        return pools


class FCN(nn.Module):
    """Fully convolutional network (Long, Shelhamer and Darrell, CVPR 2015). ``[B, 3, H, W] -> [B, C, H, W]``.

    The classifier's dense layers become convolutions (``fc6`` 3x3, ``fc7`` 1x1) on ``pool5`` (1/32 of the
    input), a 1x1 conv scores every class, and a transposed convolution initialised to bilinear upsamples:

    - ``variant=32`` (FCN-32s): scores of pool5, upsampled x32 at once: coarse, blobby boundaries.
    - ``variant=16``: upsample x2, add 1x1 scores of ``pool4`` (1/16), then x16.
    - ``variant=8``: once more x2 and add the scores of ``pool3`` (1/8), then x8.

    The skip scores start at zero (as in the paper), so 16s / 8s begin as 32s and learn to use the finer
    features. H and W must be divisible by 32. ``decode(pools)`` runs everything after the encoder.
    """

    def __init__(
        self,
        num_classes: int,
        variant: Literal[32, 16, 8] = 8,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        head_width: int = 256,
        in_channels: int = 3,
    ):
        super().__init__()
        if variant not in (32, 16, 8):
            raise ValueError(f"variant must be 32, 16 or 8 (FCN-32s/16s/8s), got {variant!r}")
        widths = _check_widths(widths, 5, "FCN")
        self.variant = variant
        self.encoder = _VGGEncoder(widths[:5], in_channels)
        self.fc = nn.Sequential(conv_bn_act(widths[4], head_width, 3), conv_bn_act(head_width, head_width, 1))
        self.score = nn.Conv2d(head_width, num_classes, 1)
        skips = {32: (), 16: (3,), 8: (3, 2)}[variant]  # indices of pool4, pool3 in the encoder's output
        self.skip_index = skips
        self.score_skips = nn.ModuleList([nn.Conv2d(widths[i], num_classes, 1) for i in skips])
        self.up2 = nn.ModuleList([bilinear_upsample(num_classes, 2) for _ in skips])
        for conv in self.score_skips:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.up_final = bilinear_upsample(num_classes, variant)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 32, f"FCN-{self.variant}s")
        return self.decode(self.encoder(x))

    def decode(self, pools: list[Tensor]) -> Tensor:
        """``[pool1, ..., pool5]`` -> logits ``[B, C, H, W]`` (FCN-8s reads pool3, pool4 and pool5)."""
        scores = self.score(self.fc(pools[4]))  # (B, C, H/32, W/32)
        for i, score_skip, up in zip(self.skip_index, self.score_skips, self.up2, strict=True):
            scores = up(scores) + score_skip(pools[i])  # (B, C, H/16, W/16), then (B, C, H/8, W/8)
        return self.up_final(scores)  # (B, C, H, W)


# -------------------------------------------------------------------------------------------- U-Net
class UNet(nn.Module):
    """U-Net (Ronneberger, Fischer and Brox, MICCAI 2015). ``[B, 3, H, W] -> [B, num_classes, H, W]``.

    Contracting path: two 3x3 convs, then 2x2 max pool, the channels doubling (``widths``). Expanding path:
    a 2x2 up-convolution (transposed conv, stride 2) halving the channels, **concatenation** with the
    contracting path's feature map of the same size (the skip connection), two 3x3 convs. A 1x1 conv maps
    the last ``widths[0]``-vector of every pixel to class scores. We pad the convs ('same'), so no cropping
    is needed (the paper's unpadded convs lose pixels at the border). H, W divisible by ``2**(len-1)``.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128, 256), in_channels: int = 3):
        super().__init__()
        widths = _check_widths(widths, 2, "UNet")
        chans = (in_channels, *widths)
        self.down = nn.ModuleList([_double_conv(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:])])
        self.merge = nn.ModuleList([_double_conv(2 * a, a) for a in widths[:-1]])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 2 ** (len(self.down) - 1), "UNet")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)  # (B, widths[i], H/2^i, W/2^i)
        x = skips.pop()  # the bottleneck
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))  # (B, widths[i], H/2^i, W/2^i)
        return self.head(x)


# ------------------------------------------------------------------------------------------- SegNet
class SegNet(nn.Module):
    """SegNet (Badrinarayanan, Kendall and Cipolla, PAMI 2017). ``[B, 3, H, W] -> [B, num_classes, H, W]``.

    The encoder's max pools remember *where* each maximum was (``return_indices``); the decoder puts values
    back at exactly those positions (max unpooling, zeros elsewhere) and 3x3 convs fill in the rest. Only
    the indices cross from encoder to decoder, not feature maps (cheaper than U-Net's concatenation).
    H and W divisible by ``2**len(widths)``.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3):
        super().__init__()
        widths = _check_widths(widths, 1, "SegNet")
        chans = (in_channels, *widths)
        self.encoder = nn.ModuleList([_double_conv(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        outs = (widths[0], *widths[:-1])  # the decoder mirrors the encoder; the last stage keeps widths[0]
        self.decoder = nn.ModuleList([_double_conv(b, a) for a, b in zip(outs, widths, strict=True)])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 2 ** len(self.encoder), "SegNet")
        indices = []
        for block in self.encoder:
            x, idx = F.max_pool2d(block(x), 2, return_indices=True)  # remember the argmax positions
            indices.append(idx)
        for block, idx in zip(reversed(self.decoder), reversed(indices), strict=True):
            x = block(F.max_unpool2d(x, idx, 2))  # values back where the max was, zeros elsewhere
        return self.head(x)


# ------------------------------------------------------------------------------------------ DeepLab
class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v2/v3): ``[B, c_in, h, w] -> [B, c_out, h, w]``.

    Parallel branches look at the same map with different receptive fields: a 1x1 conv, one 3x3 conv per
    ``rate`` (dilation), and the global average of the image (context); their outputs are concatenated and
    mixed by a 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int, rates: Sequence[int] = (2, 4, 6)):
        super().__init__()
        branches = [conv_bn_act(c_in, c_out, kernel=1)]
        branches += [conv_bn_act(c_in, c_out, dilation=r) for r in rates]
        self.branches = nn.ModuleList(branches)
        # no BatchNorm after global pooling: a 1x1 map with batch size 1 has no statistics to normalise
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, c_out, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_act(c_out * (len(branches) + 1), c_out, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])  # (B, c_out, h, w): one value per map
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLab(nn.Module):
    """DeepLab (Chen et al., PAMI 2018) in miniature. ``[B, 3, H, W] -> [B, num_classes, H, W]``.

    A VGG-like backbone pools three times (output stride 8); its last stage uses atrous convolution
    (dilation ``dilation``) instead of a fourth pool, so the receptive field keeps growing while the map
    stays at 1/8. ASPP, a 1x1 conv to classes, and **bilinear interpolation** (no learned decoder) back to
    the input size. H and W divisible by 8.
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64, 128),
        dilation: int = 2,
        rates: Sequence[int] = (2, 4, 6),
        aspp_width: int = 64,
        in_channels: int = 3,
    ):
        super().__init__()
        widths = _check_widths(widths, 4, "DeepLab")
        w = widths
        self.backbone = nn.Sequential(
            _double_conv(in_channels, w[0]), nn.MaxPool2d(2),  # 1/2
            _double_conv(w[0], w[1]), nn.MaxPool2d(2),  # 1/4
            _double_conv(w[1], w[2]), nn.MaxPool2d(2),  # 1/8
            _double_conv(w[2], w[3], dilation=dilation),  # still 1/8: atrous instead of pooled
        )  # fmt: skip
        self.aspp = ASPP(w[3], aspp_width, rates)
        self.classifier = nn.Conv2d(aspp_width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 8, "DeepLab")
        logits = self.classifier(self.aspp(self.backbone(x)))  # (B, C, H/8, W/8)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------- segmentation-models-pytorch
class _ImageNetInput(nn.Module):
    """Normalise ``[0, 1]`` images with ImageNet's mean / std, as a pretrained encoder expects, then run
    ``net``. The smp model is ``.net`` (its encoder ``.net.encoder``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        from coursekit.weights import IMAGENET_MEAN, IMAGENET_STD

        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 32, type(self.net).__name__)
        return self.net((x - self.mean) / self.std)


def _smp_model(cls_name: str, num_classes: int, pretrained: bool, encoder: str, verbose: bool, **kw) -> nn.Module:
    import segmentation_models_pytorch as smp  # lazy: smp is slow to import
    from torchvision.models import resnet18

    from coursekit.weights import load_backbone_weights, smp_encoder_weights

    # quiet here: offline, load_backbone_weights prints the one line saying what we fell back to
    weights = smp_encoder_weights(verbose=False) if pretrained else None
    net = getattr(smp, cls_name)(encoder_name=encoder, encoder_weights=weights, classes=num_classes, **kw)
    source = weights or ("random" if not pretrained else None)
    if pretrained and weights is None:
        if encoder != "resnet18":
            raise ValueError(f"offline, only encoder='resnet18' has pretrained weights (coursekit's); got {encoder!r}")
        # through a torchvision ResNet-18: smp's encoder.load_state_dict returns None, so
        # load_backbone_weights cannot check the keys on it; the strict load below does
        resnet = resnet18(weights=None)
        source = load_backbone_weights(resnet, verbose=verbose)
        net.encoder.load_state_dict({k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")})
    model = _ImageNetInput(net)
    model.weights_source = source  # where the encoder's weights came from (part of coursekit.model_cache's key)
    return model


def smp_unet(num_classes: int, pretrained: bool = True, encoder: str = "resnet18", verbose: bool = True) -> nn.Module:
    """segmentation-models-pytorch's ``Unet`` on a ResNet-18 encoder, with ImageNet weights online and
    coursekit's own pretrained ResNet-18 offline (one printed line says which); ``pretrained=False``: random.

    Takes ``[0, 1]`` images ``[B, 3, H, W]`` (H, W divisible by 32) and normalises them itself.
    """
    return _smp_model("Unet", num_classes, pretrained, encoder, verbose)


def smp_deeplabv3plus(
    num_classes: int, pretrained: bool = True, encoder: str = "resnet18", verbose: bool = True,
    rates: Sequence[int] = (2, 4, 6),
) -> nn.Module:
    """segmentation-models-pytorch's ``DeepLabV3Plus`` (ASPP + a light decoder) on ResNet-18, weights as in
    :func:`smp_unet`. ``rates``: ASPP dilations; smp's default (12, 24, 36) is meant for 512 px inputs, on
    a 64 px image the 1/16 map is 4x4 and such rates would only see padding.
    """
    return _smp_model("DeepLabV3Plus", num_classes, pretrained, encoder, verbose, decoder_atrous_rates=tuple(rates))


# --------------------------------------------------------------------------------- the model registry
def _segmenter(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``build(num_classes, **kwargs)``, refusing a class count that cannot be right."""

    def make(num_classes: int, **kwargs) -> nn.Module:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (background included), got {num_classes!r}")
        return build(num_classes, **kwargs)

    return make


def _fcn(variant: Literal[32, 16, 8]) -> Callable[..., nn.Module]:
    def build(num_classes: int, **kwargs) -> nn.Module:
        return FCN(num_classes, variant, **kwargs)

    return build


# In the lecture's order: coursekit.models.create_model("unet", num_classes=7), list_models("segmentation").
_SEGMENTERS: dict[str, Callable[..., nn.Module]] = {
    "naive": NaiveFullRes, "encoder_decoder": EncoderDecoder, "fcn32s": _fcn(32), "fcn16s": _fcn(16),
    "fcn8s": _fcn(8), "unet": UNet, "segnet": SegNet, "deeplab": DeepLab, "smp_unet": smp_unet,
    "smp_deeplabv3plus": smp_deeplabv3plus,
}  # fmt: skip
for _name, _build in _SEGMENTERS.items():
    _tiny = {"pretrained": False} if _name.startswith("smp_") else {}  # no download in a smoke test
    # batch 2: BatchNorm after smp's ASPP pooling needs > 1 value per channel
    register_model(_name, _segmenter(_build), family="segmentation",
                   smoke=Smoke({"num_classes": 5, **_tiny}, images(3, 64), [(2, 5, 64, 64)]))
