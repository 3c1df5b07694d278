"""OverFeat in miniature: a window classifier + box regressor, and the same net made fully convolutional.

Sermanet et al., "OverFeat: Integrated recognition, localization and detection using convolutional
networks" (2013); decks 001 and 002, taught in notebook ``03_sliding_windows_overfeat``.

The figure the code follows::

    window [B, C, k, k] ─► features (unpadded convs + pools, total stride S) ─► [B, C', h, w]
                              ├─► classifier (Flatten, Linear, ...) ─► class logits [B, K]
                              └─► regressor  (Flatten, Linear, ...) ─► box [B, 4] in window coordinates

:func:`fc_to_conv` rewrites a Flatten + Linear head as an ``h x w`` convolution followed by 1x1
convolutions, with the same weights (deck 002: ``16x5x5 -> 400 -> 120`` becomes a 5x5 conv to
``120x1x1``). The rewritten net (:class:`FullyConvOverFeat`) takes a whole image and returns one
output per window position at stride ``S``: the sliding-window loop (:class:`SlidingWindows`) in a
single pass, because overlapping windows now share their convolutions.

The features must use no zero padding: a padded conv sees zeros at a crop's border but real pixels
inside the whole image, and the two maps would differ there (OverFeat's convolutions are unpadded too).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.models.registry import Smoke, images, register_model
from coursekit.sliding import sliding_window_scores, window_grid

__all__ = [
    "OverFeat",
    "FullyConvOverFeat",
    "SlidingWindows",
    "fc_to_conv",
    "feature_stride",
    "overfeat_lenet",
    "overfeat_net",
]

# Layers that act on each number (or each channel vector) alone: they work unchanged on a map.
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity)
_STRIDED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _conv_from_linear(linear: nn.Linear, in_shape: tuple[int, int, int]) -> nn.Conv2d:
    """A conv whose kernel covers the whole ``(C, h, w)`` input: the same dot products as ``linear``."""
    c, h, w = in_shape
    if linear.in_features != c * h * w:
        raise ValueError(
            f"Linear(in_features={linear.in_features}) cannot read an input of shape {in_shape} "
            f"({c * h * w} numbers): pass the in_shape the head really receives"
        )
    conv = nn.Conv2d(
        c,
        linear.out_features,
        (h, w),
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        # Flatten orders the numbers channel, row, column: the same order as a conv kernel's (C, h, w).
        conv.weight.copy_(linear.weight.reshape(linear.out_features, c, h, w))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def fc_to_conv(classifier_head: nn.Sequential, in_shape: tuple[int, int, int]) -> nn.Sequential:
    """Rewrite a dense head as convolutions with the same weights (deck 002). -> ``nn.Sequential``.

    Args:
        classifier_head: ``Flatten`` (optional), ``Linear`` layers and element-wise layers
            (ReLU, LeakyReLU, GELU, SiLU, Sigmoid, Tanh, Dropout, Identity).
        in_shape: ``(C, h, w)``, the feature map the head receives for one window, e.g. ``(16, 5, 5)``.

    The first ``Linear`` becomes a ``Conv2d(C, out, (h, w))``; every later ``Linear`` a 1x1 conv;
    ``Flatten`` disappears. On a ``[B, C, h, w]`` input the result gives ``[B, out, 1, 1]``, equal to
    the head's ``[B, out]``; on a larger ``[B, C, H, W]`` map it gives ``[B, out, H - h + 1, W - w + 1]``:
    the head applied at every position. The original head is not changed.
    """
    if not isinstance(classifier_head, nn.Sequential):
        raise ValueError(f"classifier_head must be an nn.Sequential, got {type(classifier_head).__name__}")
    if len(in_shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in in_shape):
        raise ValueError(f"in_shape must be (C, h, w) positive ints, got {in_shape!r}")
    shape = tuple(in_shape)  # (C, h, w) that the next layer sees
    layers: list[nn.Module] = []
    for i, layer in enumerate(classifier_head):
        if isinstance(layer, nn.Flatten):
            if layer.start_dim != 1:
                raise ValueError(
                    f"layer {i}: only Flatten(start_dim=1) is supported, got start_dim={layer.start_dim}"
                )
            continue  # the conv reads the map directly
        if isinstance(layer, nn.Linear):
            layers.append(_conv_from_linear(layer, shape))
            shape = (layer.out_features, 1, 1)
        elif isinstance(layer, _ELEMENTWISE):
            layers.append(copy.deepcopy(layer))
        else:
            names = ", ".join(t.__name__ for t in (nn.Flatten, nn.Linear, *_ELEMENTWISE))
            raise ValueError(
                f"layer {i} ({type(layer).__name__}) has no conv equivalent here; supported: {names}"
            )
    return nn.Sequential(*layers)


def feature_stride(features: nn.Module) -> int:
    """The total stride of ``features``: the product of its convs' and pools' strides.

    Two windows ``S`` pixels apart give feature maps one cell apart, so the convolutional net's
    output map has the sliding windows' positions at stride ``S``. Square strides only.
    """
    stride = 1
    for m in features.modules():
        if isinstance(m, _STRIDED):
            s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
            if s[0] != s[1]:
                raise ValueError(
                    f"{type(m).__name__} has a non-square stride {s}; feature_stride needs square ones"
                )
            stride *= s[0]
    return stride


def _in_channels(features: nn.Module) -> int:
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError("features has no Conv2d: cannot tell how many input channels it takes")


class OverFeat(nn.Module):
    """A window classifier + box regressor sharing one feature extractor (deck 001's figure).

    Args:
        features: unpadded convs and pools (total stride :func:`feature_stride`).
        classifier: ``Flatten, Linear, ...`` head giving ``K`` class logits (class 0: background).
        regressor: ``Flatten, Linear, ...`` head giving the object's box in window coordinates
            (``coursekit.sliding.encode_window_boxes``), or None for a classifier alone.
        window: the input size ``k`` the dense heads were built for.

    ``forward(x: Tensor[B, C, k, k]) -> (logits Tensor[B, K], boxes Tensor[B, 4])`` (logits only
    without a regressor). ``feature_shape`` is the ``(C', h, w)`` the heads receive.
    """

    def __init__(
        self, features: nn.Module, classifier: nn.Sequential, regressor: nn.Sequential | None, window: int
    ):
        super().__init__()
        self.features, self.classifier, self.regressor = features, classifier, regressor
        self.window = window
        self.stride = feature_stride(features)
        self.in_channels = _in_channels(features)
        with torch.no_grad():
            probe = torch.zeros(1, self.in_channels, window, window)
            self.feature_shape: tuple[int, int, int] = tuple(features(probe).shape[1:])  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        B, C, H, W = x.shape
        if (C, H, W) != (self.in_channels, self.window, self.window):
            raise ValueError(
                f"OverFeat takes windows [B, {self.in_channels}, {self.window}, {self.window}], "
                f"got {list(x.shape)}; "
                "for a whole image use SlidingWindows(net, stride) or net.to_fully_convolutional()"
            )
        f = self.features(x)  # (B, C', h, w)
        logits = self.classifier(f)  # (B, K)
        if self.regressor is None:
            return logits
        return logits, self.regressor(f)  # (B, K), (B, 4)

    def to_fully_convolutional(self, padding: int = 0) -> FullyConvOverFeat:
        """The same net with its dense heads rewritten as convolutions (weights copied)."""
        regressor = None if self.regressor is None else fc_to_conv(self.regressor, self.feature_shape)
        return FullyConvOverFeat(
            copy.deepcopy(self.features),
            fc_to_conv(self.classifier, self.feature_shape),
            regressor,
            window=self.window,
            padding=padding,
        )


class FullyConvOverFeat(nn.Module):
    """OverFeat run on a whole image in one pass: conv heads over the shared feature map.

    ``forward(images: Tensor[B, C, H, W]) -> (logits Tensor[B, K, rows, cols], boxes Tensor[B, 4, rows,
    cols])`` (logits only without a regressor), where ``(rows, cols) = window_grid((H, W), window,
    stride, padding)``: entry ``[:, :, i, j]`` is the net's output on the window at ``(i * S - padding,
    j * S - padding)``. ``padding`` zero-pads the image first (deck 002: 28 turns 25x25 into 32x32).
    """

    def __init__(
        self,
        features: nn.Module,
        classifier: nn.Sequential,
        regressor: nn.Sequential | None,
        window: int,
        padding: int = 0,
    ):
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.features, self.classifier, self.regressor = features, classifier, regressor
        self.window, self.padding = window, padding
        self.stride = feature_stride(features)

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        B, C, H, W = images.shape
        window_grid((H, W), self.window, self.stride, self.padding)  # raises if the image is too small
        p = self.padding
        f = self.features(F.pad(images, (p, p, p, p)))  # (B, C', H', W')
        logits = self.classifier(f)  # (B, K, rows, cols)
        if self.regressor is None:
            return logits
        return logits, self.regressor(f)  # (B, K, rows, cols), (B, 4, rows, cols)


class SlidingWindows(nn.Module):
    """The loop of deck 002 as a module: ``net`` on every window, one forward pass per ``batch_size`` crops.

    Same inputs and outputs as :class:`FullyConvOverFeat` (so ``coursekit.train.time_per_image``
    can time both); built for comparisons, not speed.
    """

    def __init__(self, net: OverFeat, stride: int | None = None, padding: int = 0, batch_size: int = 1):
        super().__init__()
        self.net = net
        self.stride = net.stride if stride is None else stride
        self.padding, self.batch_size = padding, batch_size

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        per_image = [
            sliding_window_scores(self.net, img, self.net.window, self.stride, self.padding, self.batch_size)
            for img in images
        ]
        if isinstance(per_image[0], Tensor):
            return torch.stack(per_image)  # (B, K, rows, cols)
        return tuple(torch.stack(maps) for maps in zip(*per_image, strict=True))


def _lenet_features(in_channels: int, channels: Sequence[int]) -> nn.Sequential:
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 -> 28 -> 14
        nn.Conv2d(c1, c2, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 14 -> 10 -> 5
    )


def _dense_head(
    in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.0
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(in_features, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = h
    return nn.Sequential(*layers, nn.Linear(in_features, out_features))


def overfeat_lenet(
    num_classes: int = 11,
    in_channels: int = 3,
    channels: tuple[int, int] = (6, 16),
    hidden: tuple[int, ...] = (120, 84),
    box_hidden: tuple[int, ...] = (120,),
    regress: bool = True,
    dropout: float = 0.0,
) -> OverFeat:
    """LeNet-5 as a 32x32 window classifier + regressor: deck 002's ``16x5x5 -> 400 -> 120 -> 84 -> 10``.

    Features: ``conv5 -> pool2 -> conv5 -> pool2`` (unpadded, stride 4), giving ``channels[1] x 5 x 5``;
    classifier ``400 -> 120 -> 84 -> num_classes`` (class 0 = background), regressor ``400 -> 120 -> 4``.
    """
    features = _lenet_features(in_channels, channels)
    flat = channels[1] * 5 * 5
    regressor = _dense_head(flat, box_hidden, 4) if regress else None
    return OverFeat(features, _dense_head(flat, hidden, num_classes, dropout), regressor, window=32)


def overfeat_net(
    num_classes: int = 2,
    in_channels: int = 3,
    window: int = 64,
    channels: tuple[int, ...] = (32, 64, 128),
    hidden: int = 256,
    regress: bool = True,
) -> OverFeat:
    """Deck 002's 64x64 window net: one ``(unpadded 3x3 conv, ReLU, 2x2 max-pool)`` block per channel
    count, so three blocks shrink the window 8 times (64 -> 6x6 features) and the stride is 8."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    features = nn.Sequential(*layers)
    with torch.no_grad():
        c, h, w = features(torch.zeros(1, in_channels, window, window)).shape[1:]
    if h < 1 or w < 1:
        raise ValueError(f"window {window} is too small for {len(channels)} conv + pool blocks")
    flat = c * h * w
    regressor = _dense_head(flat, (hidden,), 4) if regress else None
    return OverFeat(features, _dense_head(flat, (hidden,), num_classes), regressor, window=window)


register_model("overfeat_lenet", overfeat_lenet, family="overfeat",
               smoke=Smoke({"num_classes": 11}, images(3, 32), [(2, 11), (2, 4)]))
register_model("overfeat_net", overfeat_net, family="overfeat",
               smoke=Smoke({"num_classes": 3, "window": 32, "channels": (4, 8, 8), "hidden": 8}, images(3, 32),
                           [(2, 3), (2, 4)]))
