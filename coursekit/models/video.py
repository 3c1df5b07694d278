"""Video classifiers of deck 003, small enough to train on a CPU: frame average, RNN, C3D, two-stream.

Every model takes a clip batch ``[B, T, 3, H, W]`` (frames first, as :class:`coursekit.data.ActionClips`
gives them) and returns logits ``[B, num_classes]``; the two-stream net also takes the optical flow
``[B, T - 1, 2, H, W]``. Notebook 11.

- :class:`FrameAverage`: a 2D CNN on every frame, features averaged over time, a linear classifier. Order
  of the frames is invisible to it: a clip and its reverse get the same logits.
- :class:`FrameRNN`: the same per-frame CNN, a GRU over the frame features (Karpathy et al., 2014 use
  fusion; Donahue et al., 2015 an LSTM); sees the order.
- :class:`C3D`: 3x3x3 convolutions over (time, height, width) (Tran et al., 2015), as the deck's slide.
- :class:`TwoStream`: a spatial stream on one RGB frame and a temporal stream on the stacked optical flow
  (Simonyan & Zisserman, 2014), fused by averaging their class scores.

Each registers itself: ``coursekit.models.create_model("c3d", num_classes=8)``; ``tests/test_models.py``
smoke-tests them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coursekit.models.blocks import conv_bn_act

__all__ = ["FrameEncoder", "FrameAverage", "FrameRNN", "C3D", "TwoStream"]


def _check_clip(x: Tensor) -> None:
    if x.dim() != 5 or x.shape[2] != 3:
        raise ValueError(f"clips must be (B, T, 3, H, W), frames first; got shape {tuple(x.shape)}. "
                         "A (B, 3, T, H, W) batch becomes one with x.transpose(1, 2)")


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


class FrameEncoder(nn.Module):
    """A small 2D CNN for one frame: ``[N, in_channels, H, W] -> [N, 4 * width]`` (3 conv blocks, global mean)."""

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if width < 1 or in_channels < 1:
            raise ValueError(f"width and in_channels must be >= 1, got {width}, {in_channels}")
        self.out_dim = 4 * width
        widths = (in_channels, width, 2 * width, 4 * width)
        blocks = [nn.Sequential(conv_bn_act(c_in, c_out), nn.MaxPool2d(2)) for c_in, c_out in zip(widths, widths[1:])]
        self.net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _PerFrame(nn.Module):
    """Shared part of FrameAverage and FrameRNN: the 2D CNN applied to every frame."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.frame = FrameEncoder(3, width)

    def frame_features(self, x: Tensor) -> Tensor:
        _check_clip(x)
        B, T = x.shape[:2]
        return self.frame(x.flatten(0, 1)).view(B, T, -1)  # (B, T, D)


class FrameAverage(_PerFrame):
    """Per-frame CNN features averaged over time, then a linear layer: ``[B, T, 3, H, W] -> [B, C]``."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        _check_num_classes(num_classes)
        super().__init__(width)
        self.fc = nn.Linear(self.frame.out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.frame_features(x).mean(1))  # mean over T: the order of frames is lost


class FrameRNN(_PerFrame):
    """Per-frame CNN features read in order by a GRU; its last state is classified: ``[B, T, 3, H, W] -> [B, C]``."""

    def __init__(self, num_classes: int, width: int = 16, hidden: int = 64) -> None:
        _check_num_classes(num_classes)
        super().__init__(width)
        self.rnn = nn.GRU(self.frame.out_dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(self.frame_features(x))  # h: (1, B, hidden), the state after the last frame
        return self.fc(h[0])


class C3D(nn.Module):
    """A C3D-style network (Tran et al., 2015): 3x3x3 convolutions, the first pool spatial only.

    ``[B, T, 3, H, W] -> [B, C]``. Four conv blocks of ``width, 2w, 4w, 8w`` channels; pools (1, 2, 2),
    then (2, 2, 2) twice, then a global average over (T, H, W). C3D keeps time whole in the first pool
    "to not merge the temporal signal too early"; we do the same.
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        chans = (3, width, 2 * width, 4 * width, 8 * width)
        pools = ((1, 2, 2), (2, 2, 2), (2, 2, 2), None)
        layers: list[nn.Module] = []
        for c_in, c_out, pool in zip(chans[:-1], chans[1:], pools, strict=True):
            layers += [nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]
            if pool is not None:
                layers.append(nn.MaxPool3d(pool))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _check_clip(x)
        return self.fc(self.features(x.transpose(1, 2)))  # (B, 3, T, H, W) for Conv3d


class TwoStream(nn.Module):
    """Two-stream network (Simonyan & Zisserman, 2014): ``forward(clip [B, T, 3, H, W], flow [B, T-1, 2, H, W])``.

    Spatial stream: a 2D CNN on the middle RGB frame (what is in the picture). Temporal stream: a 2D CNN on
    the T - 1 flow fields stacked as 2(T - 1) channels (how things move, and in which order). Late fusion:
    the mean of the two streams' log-probabilities; ``logits_per_stream`` returns each.
    """

    def __init__(self, num_classes: int, n_frames: int, width: int = 16) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if n_frames < 2:
            raise ValueError(f"n_frames must be >= 2 for optical flow, got {n_frames}")
        self.n_frames = n_frames
        self.spatial = nn.Sequential(FrameEncoder(3, width), nn.Linear(4 * width, num_classes))
        self.temporal = nn.Sequential(FrameEncoder(2 * (n_frames - 1), width), nn.Linear(4 * width, num_classes))

    def logits_per_stream(self, clip: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        _check_clip(clip)
        B, T = clip.shape[:2]
        if T != self.n_frames or flow.shape[:3] != (B, T - 1, 2) or flow.shape[3:] != clip.shape[3:]:
            raise ValueError(f"expected a clip (B, {self.n_frames}, 3, H, W) and its flow (B, {self.n_frames - 1}, 2, "
                             f"H, W); got {tuple(clip.shape)} and {tuple(flow.shape)}")
        return self.spatial(clip[:, T // 2]), self.temporal(flow.flatten(1, 2))

    def forward(self, clip: Tensor, flow: Tensor) -> Tensor:
        spatial, temporal = self.logits_per_stream(clip, flow)
        return (spatial.log_softmax(1) + temporal.log_softmax(1)) / 2


def _clips(with_flow: bool = False, B: int = 2, T: int = 4, S: int = 16):
    def make(g: torch.Generator) -> tuple:
        clip = torch.rand(B, T, 3, S, S, generator=g)
        return (clip, torch.randn(B, T - 1, 2, S, S, generator=g)) if with_flow else (clip,)

    return make


def _register() -> None:
    from coursekit.models.registry import Smoke, register_model

    tiny = {"num_classes": 3, "width": 4}
    register_model("frame_average", FrameAverage, family="video", smoke=Smoke(tiny, _clips(), [(2, 3)]))
    register_model("frame_rnn", FrameRNN, family="video", smoke=Smoke({**tiny, "hidden": 8}, _clips(), [(2, 3)]))
    register_model("c3d", C3D, family="video", smoke=Smoke(tiny, _clips(), [(2, 3)]))
    register_model("two_stream", TwoStream, family="video",
                   smoke=Smoke({**tiny, "n_frames": 4}, _clips(with_flow=True), [(2, 3)]))


_register()
