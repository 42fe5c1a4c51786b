"""Model registry and factory: ``create_model(name, num_classes, in_chans=3, **kwargs)``.

One short function per variant, registered with ``@register``. All models take an NCHW
float32 batch and return logits [N, num_classes]; BatchNorm is folded into the preceding
convolution at export (:func:`fold_batchnorm`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .efficientnet import LITE_MEAN, LITE_STD, LITE_VARIANTS, EfficientNetLite

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_CARDS: dict[str, "ModelCard"] = {}


@dataclass(frozen=True)
class ModelCard:
    """What a model declares about itself, as data (timm's ``pretrained_cfg``): read by the
    trainer (contract, ``--init-from``) and by export (the uint8-input fold). Every instance
    built by :func:`create_model` carries its card as ``model.card``."""
    name: str
    first_conv: str                  # the convolution that reads the image (export folds the normalisation into it)
    classifier: str                  # the classification head: new for a new task, never copied by --init-from
    input_pad: str | None = None     # a padding layer in front of first_conv (export pads raw pixels instead)
    native_size: int | None = None   # the input side the architecture (and its pretrained weights) was made for
    color_order: str | None = None   # None: the training config's choice; set where pretrained weights need one
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def preprocess_facts(self) -> dict:
        """The contract fields the model fixes (e.g. the normalisation its weights expect)."""
        return {k: getattr(self, k) for k in ("color_order", "mean", "std") if getattr(self, k) is not None}


def register(fn: Callable[..., nn.Module] | None = None, **card) -> Callable:
    """``@register`` or ``@register(first_conv=..., classifier=..., ...)``: add a model builder
    to the registry with its :class:`ModelCard` (default: ``stem.0`` reads the image, ``head``
    classifies)."""
    def add(fn):
        _REGISTRY[fn.__name__] = fn
        _CARDS[fn.__name__] = ModelCard(name=fn.__name__, **{"first_conv": "stem.0", "classifier": "head", **card})
        return fn

    return add(fn) if fn is not None else add


def model_card(name: str) -> ModelCard:
    if name not in _CARDS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _CARDS[name]


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                 **kwargs) -> nn.Module:
    """A registered model; with ``pretrained`` its ImageNet weights (all but the classifier,
    which is new for ``num_classes``) are loaded and ``model.pretrained_info`` says from where."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    model = _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.card = _CARDS[name]
    model.pretrained_info = None
    if pretrained:
        from .pretrained import has_pretrained, load_pretrained

        if not has_pretrained(name):
            raise ValueError(f"{name} has no pretrained weights; pretrained models: "
                             f"{[m for m in list_models() if has_pretrained(m)]}")
        if in_chans != 3:
            raise ValueError(f"pretrained {name} takes 3-channel RGB images, not {in_chans} channels")
        model.pretrained_info = load_pretrained(model, name)
    return model


def preprocess_facts(name: str) -> dict:
    """What a registered model declares about its input (e.g. the normalisation its
    pretrained weights expect); {} for models without such facts."""
    return model_card(name).preprocess_facts()


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> (ReLU). Folded to a single conv at export. Padding k // 2 unless given."""

    def __init__(self, cin, cout, k=3, stride=1, act=True, padding=None):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2 if padding is None else padding, bias=False),
                  nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 ConvBN, identity or 1x1-projection shortcut, ReLU after the add."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride)
        self.conv2 = ConvBNAct(cout, cout, 3, 1, act=False)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else ConvBNAct(cin, cout, 1, stride, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class EdgeResNet(nn.Module):
    """A small ResNet for CPU inference: dense 3x3 convs (fast in INT8 on x86/ARM), ReLU only
    (fuses into quantized convs), BatchNorm (folded at export), global average pooling.

    x [N, C, H, W] -> stem (stride ``stem_stride``) -> stages (stage i divides H, W by
    ``strides[i]``) -> GAP -> FC.

    The stem is a 3x3 convolution, or with ``patch_stem`` a non-overlapping ``stem_stride`` x
    ``stem_stride`` "patchify" convolution (no padding): on CPUs a convolution over 3 input
    channels is bound by its im2col, not its MACs, so a patchify stem that emits 16x fewer
    pixels than a stride-1 one is much cheaper, and without padding the input normalisation
    folds exactly into its weights (export's uint8 input).
    """

    def __init__(self, num_classes, in_chans=3, widths=(32, 64, 128, 192), depths=(1, 2, 2, 1),
                 stem_width=24, stem_stride=1, patch_stem=False, strides=(2, 2, 2, 2), dropout=0.2):
        super().__init__()
        if patch_stem:
            self.stem = ConvBNAct(in_chans, stem_width, stem_stride, stem_stride, padding=0)
        else:
            self.stem = ConvBNAct(in_chans, stem_width, 3, stem_stride)
        blocks, cin = [], stem_width
        for width, depth, stride in zip(widths, depths, strides):
            for i in range(depth):
                blocks.append(BasicBlock(cin, width, stride=stride if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each residual branch
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)

    def features(self, x):  # [N, C, H, W] -> [N, num_features]
        return self.pool(self.blocks(self.stem(x))).flatten(1)

    def forward(self, x):  # -> logits [N, num_classes]
        return self.head(self.dropout(self.features(x)))


class SeedCNN(nn.Module):
    """The seed baseline: conv 32/64/128 3x3 + max-pool, dense 128, softmax head (logits out)."""

    def __init__(self, num_classes, in_chans=3, input_size=64, dropout=0.3):
        super().__init__()
        layers, cin = [], in_chans
        for width in (32, 64, 128):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = width
        self.body = nn.Sequential(*layers)
        side = input_size // 8
        self.num_features = 128
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(128 * side * side, 128), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(128, num_classes)

    def features(self, x):  # [N, C, S, S] -> [N, 128]
        return self.fc(self.body(x))

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


@register(first_conv="body.0")
def seed_cnn(num_classes, in_chans=3, input_size=64, **kw):
    return SeedCNN(num_classes, in_chans, input_size=input_size, **kw)


@register
def edge_resnet(num_classes, in_chans=3, input_size=None, **kw):
    """~1.3 M parameters, ~0.1 GMAC at 128x128. Its stride-2 stem lets it see 128 px inputs
    for the cost of 64 px ones (fine-grained products need the detail: +5 pp test top-1 on
    Grocery over 64 px inputs at equal MACs)."""
    return EdgeResNet(num_classes, in_chans, **{"stem_stride": 2, **kw})


@register
def edge_resnet_slim(num_classes, in_chans=3, input_size=None, **kw):
    """edge_resnet with one block less and a 160-wide last stage, ~0.83 M parameters (INT8
    file under 1 MB), ~75 MMAC at 128x128. On Grocery it matched edge_resnet's accuracy
    (64.1 % vs 63.6 % test top-1) in 22 % fewer MACs. The default until edge_resnet_patch."""
    return EdgeResNet(num_classes, in_chans, **{"stem_stride": 2, "widths": (32, 64, 128, 160),
                                                "depths": (1, 2, 1, 1), **kw})


@register
def edge_resnet_patch(num_classes, in_chans=3, input_size=None, **kw):
    """The default edge model: edge_resnet_slim's body behind a 4x4 stride-4 patchify stem
    (32 wide) instead of a 3x3 stride-2 stem and the first stage's stride: the same 32x32
    grid into the first block at 128 px, ~76 MMAC, 0.83 M parameters. The slim stem's
    3-channel im2col over 64x64 outputs took ~20 % of the INT8 latency; this one is several
    times cheaper, and export folds the input normalisation into it, so the models take
    uint8 pixels."""
    return EdgeResNet(num_classes, in_chans, **{"stem_stride": 4, "patch_stem": True, "stem_width": 32,
                                                "strides": (1, 2, 2, 2), "widths": (32, 64, 128, 160),
                                                "depths": (1, 2, 1, 1), **kw})


@register
def edge_resnet_tiny(num_classes, in_chans=3, input_size=None, **kw):
    """A quarter-width edge_resnet for tests, demos and very small devices."""
    return EdgeResNet(num_classes, in_chans, widths=(16, 24, 32, 48), depths=(1, 1, 1, 1),
                      stem_width=12, **kw)


def _lite(variant):
    def build(num_classes, in_chans=3, input_size=None, **kw):
        return EfficientNetLite(num_classes, in_chans, variant=variant, **kw)

    build.__name__ = f"efficientnet_{variant}"
    build.__doc__ = (f"EfficientNet-{variant.capitalize()} (MBConv, no SE, ReLU6; native "
                     f"{LITE_VARIANTS[variant][2]} px), with ImageNet weights when pretrained.")
    # TF "same" padding in front of the stem conv; the ImageNet weights expect RGB (x - 127) / 128
    return register(build, first_conv="stem.1", input_pad="stem.0", classifier="head",
                    native_size=LITE_VARIANTS[variant][2], color_order="RGB", mean=LITE_MEAN, std=LITE_STD)


efficientnet_lite0 = _lite("lite0")
efficientnet_lite1 = _lite("lite1")
efficientnet_lite2 = _lite("lite2")


def input_conv(model: nn.Module) -> nn.Conv2d | None:
    """The convolution that reads the input image, as the model's card declares it; export
    folds the normalisation into it. None for a model without a card."""
    card = getattr(model, "card", None)
    return model.get_submodule(card.first_conv) if card else None


def input_pad(model: nn.Module) -> nn.Module | None:
    """The padding layer in front of :func:`input_conv`, where the card declares one."""
    card = getattr(model, "card", None)
    return model.get_submodule(card.input_pad) if card and card.input_pad else None


def within(card: ModelCard, prefix: str) -> ModelCard:
    """The card of a wrapper that holds the model as submodule ``prefix`` (paths prefixed)."""
    return dataclasses.replace(card, first_conv=f"{prefix}.{card.first_conv}", classifier=f"{prefix}.{card.classifier}",
                               input_pad=f"{prefix}.{card.input_pad}" if card.input_pad else None)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair of an nn.Sequential (ConvBNAct, ConvBNReLU6) into
    one biased Conv2d (eval only)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(module[i].eval(), module[i + 1].eval())
                module[i + 1] = nn.Identity()
    return model


@torch.no_grad()
def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one input of ``input_shape`` (C, H, W)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total

