"""EfficientNet-Lite (Tan & Le 2019; the "Lite" edge variants of the TF model garden): MBConv
blocks without squeeze-excite, ReLU6, BatchNorm, a fixed 32-channel stem and 1280-channel head.
The Lite changes make it quantization-friendly: no SE (no sigmoid gating), ReLU6 (bounded
activations), no swish.

Convolutions use TensorFlow's "same" padding, as the ImageNet weights were trained with: for a
stride-2 convolution over an even input the one extra pixel is padded on the bottom/right only
(:class:`SamePad`). Stride-1 convolutions pad symmetrically, as PyTorch does.

The ImageNet weights expect RGB ``(pixel - 127) / 128`` (``LITE_MEAN`` / ``LITE_STD`` on the
[0, 1] scale), which is declared with the model (its ``ModelCard`` in models.py).
Pixel value 127 normalises to exactly 0, so export can pad the raw uint8 image with 127 and
keep the input-normalisation fold exact although the stem pads.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

# (repeats, kernel, stride, expand ratio, out channels) of EfficientNet-B0, which Lite0 keeps.
_B0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# variant: (width multiplier, depth multiplier, native resolution, dropout)
LITE_VARIANTS = {"lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2),
                 "lite2": (1.1, 1.2, 260, 0.3), "lite3": (1.2, 1.4, 280, 0.3),
                 "lite4": (1.4, 1.8, 300, 0.3)}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's round_filters: scale by ``width``, round to a multiple of ``divisor``, never
    more than 10 % below the scaled value."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


class SamePad(nn.Module):
    """TF "same" padding for a ``kernel`` x ``kernel`` convolution of ``stride``: the output is
    ceil(input / stride), the odd pixel goes to the bottom/right. ``value`` is what is padded
    (0 in normalised units; export sets the raw pixel value that normalises to 0)."""

    def __init__(self, kernel: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def _pads(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x):  # [N, C, H, W] -> [N, C, H + ph, W + pw]; sizes are static at export
        (top, bottom), (left, right) = self._pads(x.shape[-2]), self._pads(x.shape[-1])
        return F.pad(x, (left, right, top, bottom), value=self.value)


class ConvBNReLU6(nn.Sequential):
    """[SamePad] -> conv (no bias) -> BatchNorm(eps 1e-3, as TF) -> [ReLU6]. Stride-2 convs
    pad with :class:`SamePad`, stride-1 ones symmetrically inside the conv."""

    def __init__(self, cin, cout, k=1, stride=1, groups=1, act=True):
        layers = [SamePad(k, stride)] if stride > 1 else [nn.Identity()]
        layers += [nn.Conv2d(cin, cout, k, stride, 0 if stride > 1 else k // 2, groups=groups, bias=False),
                   nn.BatchNorm2d(cout, eps=1e-3)]
        layers.append(nn.ReLU6(inplace=True) if act else nn.Identity())
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (ratio > 1) -> k x k depthwise -> 1x1 project (linear);
    identity shortcut when the shape is kept. Drop-path on the residual branch in training."""

    def __init__(self, cin, cout, k, stride, expand, drop_path=0.0):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNReLU6(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNReLU6(mid, mid, k, stride, groups=mid)
        self.project = ConvBNReLU6(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x):  # [N, cin, H, W] -> [N, cout, H / stride, W / stride]
        y = self.project(self.depthwise(self.expand(x)))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth, per sample
            keep = torch.rand(x.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return x + y


class EfficientNetLite(nn.Module):
    """x [N, 3, H, W] -> stem (3x3 s2, 32) -> 7 stages of MBConv -> 1x1 conv 1280 -> GAP -> FC.

    Lite scaling: width multiplies the block channels (stem and head stay 32 / 1280), depth
    multiplies the repeats of every stage but the first and the last.
    """

    def __init__(self, num_classes, in_chans=3, variant="lite0", dropout=None, drop_path=0.1):
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; available: {sorted(LITE_VARIANTS)}")
        width, depth, self.native_size, default_dropout = LITE_VARIANTS[variant]
        self.variant = variant
        self.stem = ConvBNReLU6(in_chans, 32, 3, 2)
        specs, cin = [], 32
        for i, (repeats, k, stride, expand, cout) in enumerate(_B0_STAGES):
            cout = round_channels(cout, width)
            if 0 < i < len(_B0_STAGES) - 1:
                repeats = int(math.ceil(repeats * depth))
            for j in range(repeats):
                specs.append((cin, cout, k, stride if j == 0 else 1, expand))
                cin = cout
        self.blocks = nn.Sequential(*[MBConv(*s, drop_path=drop_path * b / len(specs)) for b, s in enumerate(specs)])
        self.head_conv = ConvBNReLU6(cin, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(default_dropout if dropout is None else dropout)
        self.head = nn.Linear(1280, num_classes)
        self.num_features = 1280
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def features(self, x):  # [N, 3, H, W] -> [N, 1280]
        return self.pool(self.head_conv(self.blocks(self.stem(x)))).flatten(1)

    def forward(self, x):  # -> logits [N, num_classes]
        return self.head(self.dropout(self.features(x)))

    def imagenet_key_map(self) -> dict[str, str]:
        return imagenet_key_map(self)

    def param_groups_by_depth(self) -> list[list[nn.Parameter]]:
        """Parameters from input to output, one group per stage of depth (stem, each block,
        head conv, classifier): for layer-wise learning-rate decay."""
        groups = [list(self.stem.parameters())]
        groups += [list(b.parameters()) for b in self.blocks]
        groups += [list(self.head_conv.parameters()), list(self.head.parameters())]
        return groups


def imagenet_key_map(model: EfficientNetLite) -> dict[str, str]:
    """Our state-dict names -> the names of the ImageNet checkpoints (``_conv_stem.weight``,
    ``_blocks.N._depthwise_conv.weight``, ...). The classifier (``head``) is not mapped."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    out = {"stem.1.weight": "_conv_stem.weight", "head_conv.1.weight": "_conv_head.weight"}
    out.update({f"stem.2.{p}": f"_bn0.{p}" for p in bn})
    out.update({f"head_conv.2.{p}": f"_bn1.{p}" for p in bn})
    for i, block in enumerate(model.blocks):
        src = f"_blocks.{i}."
        parts = [("depthwise", "_depthwise_conv", "_bn1"), ("project", "_project_conv", "_bn2")]
        if isinstance(block.expand, ConvBNReLU6):
            parts.append(("expand", "_expand_conv", "_bn0"))
        for ours, conv, norm in parts:
            out[f"blocks.{i}.{ours}.1.weight"] = src + conv + ".weight"
            out.update({f"blocks.{i}.{ours}.2.{p}": src + norm + "." + p for p in bn})
    return out
