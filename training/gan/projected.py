"""Projected discriminator (in the spirit of Projected GANs, Sauer et al., NeurIPS 2021): the
discriminator looks at images through a *frozen* ImageNet feature network and fixed random
projections of its features, and only small per-scale heads are trained.

    images [B, 3, S, S] in [-1, 1] (RGB)
      -> bilinear resize to ``feature_size``                       (the feature net's input)
      -> frozen EfficientNet-Lite0 (ImageNet), 4 cut points:        [B, 24|40|112|192, F/4 .. F/32]
      -> cross-channel mixing: a fixed random 1x1 conv per scale   [B, 64|128|256|512, ...]
      -> cross-scale mixing: top-down, each scale + a fixed random 1x1 conv of the upsampled coarser one
      -> per scale a trained head: spectral-norm 4x4 stride-2 convs down to 4x4, then a score map
         score = w . h + <embed(label), h> / sqrt(dim) (projection conditioning)  [B, 16] per scale
    -> all score maps concatenated: [B, n_scores] (the hinge loss averages over them).
  + optionally (``guidance``) the rest of the frozen network to its pooled 1280-d features and a
    frozen linear classifier on them (fitted on the real training images by :func:`fit_guidance`):
    logits [B, K] for the generator's classifier-guidance loss (as in StyleGAN-XL, Sauer et al.
    2022: cross-entropy of a pretrained classifier on the generated images, added to G's loss).
  + optionally (``pixel_width`` > 0) a small discriminator learnt from scratch on the pixels
    (:class:`~.models.Discriminator`), as in Vision-aided GANs (Kumari et al., CVPR 2022): the two
    hinge losses are summed. Measured here: alone, the frozen network's gradient w.r.t. the image
    is ~90 % above a 4-pixel scale, and the generator answered with class-independent dot
    textures the heads could not reject; the pixel discriminator sees and rejects them.

The pretrained features make real and fake differ in ways ImageNet networks care about (object
parts, textures) from the first step, which is why these GANs train in a fraction of the steps of
a discriminator learnt from scratch. Lite0's own input normalisation ``(p - 127) / 128`` is,
to 0.4 %, the GAN's [-1, 1] range, so images go in as they are.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ..efficientnet import EfficientNetLite
from .modes import HierEmbedding

# Lite0 block indices after which features are taken (ends of stages 2, 3, 5 and 6: strides 4, 8, 16, 32)
CUTS = (2, 4, 10, 14)
FEATURE_CHANNELS = (24, 40, 112, 192)
MIXED_CHANNELS = (64, 128, 256, 512)


class FrozenLiteFeatures(nn.Module):
    """EfficientNet-Lite0 trunk with ImageNet weights, frozen (eval mode, no gradients to its
    weights; gradients still flow to the input images). ``pretrained=False`` keeps the random
    initialisation (tests without the weights package)."""

    def __init__(self, pretrained: bool = True, pooled: bool = False):
        super().__init__()
        net = EfficientNetLite(num_classes=1, variant="lite0", drop_path=0.0)
        self.weights = None
        if pretrained:
            from ..pretrained import load_pretrained

            self.weights = load_pretrained(net, "efficientnet_lite0")
        self.stem = net.stem
        self.blocks = net.blocks[:CUTS[-1] + 1]
        # pooled: the last block and the 1x1 head conv too, for the 1280-d pooled features
        self.tail = nn.Sequential(*net.blocks[CUTS[-1] + 1:], net.head_conv) if pooled else None
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always eval: BatchNorm keeps its ImageNet statistics
        return super().train(False)

    def forward(self, x, pooled: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """-> (the 4 feature maps [B, 24|40|112|192, ...], pooled [B, 1280], or None without the tail
        or with ``pooled=False``)"""
        feats, h = [], self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in CUTS:
                feats.append(h)
        return feats, (self.tail(h).mean(dim=(2, 3)) if self.tail is not None and pooled else None)


def _fixed_conv1x1(cin: int, cout: int, generator: torch.Generator) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1, bias=True)
    with torch.no_grad():
        bound = math.sqrt(6.0 / cin)  # Kaiming-uniform: keeps the feature scale
        conv.weight.copy_((torch.rand(conv.weight.shape, generator=generator) * 2 - 1) * bound)
        conv.bias.zero_()
    conv.requires_grad_(False)
    return conv


class RandomProjection(nn.Module):
    """Fixed (never trained) cross-channel and cross-scale mixing of the 4 feature maps."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ccm = nn.ModuleList([_fixed_conv1x1(c, m, g) for c, m in zip(FEATURE_CHANNELS, MIXED_CHANNELS)])
        self.csm = nn.ModuleList([_fixed_conv1x1(MIXED_CHANNELS[i + 1], MIXED_CHANNELS[i], g)
                                  for i in range(len(MIXED_CHANNELS) - 1)])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [ccm(f) for ccm, f in zip(self.ccm, feats)]
        out = [mixed[-1]]
        for i in range(len(mixed) - 2, -1, -1):  # top-down: coarse scales inform the finer ones
            up = F.interpolate(out[0], size=mixed[i].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, mixed[i] + self.csm[i](up))
        return out


class ScaleHead(nn.Module):
    """Trained discriminator head of one scale: [B, C, s, s] -> score map [B, 4 * 4] (class-conditional)."""

    def __init__(self, cin: int, side: int, num_classes: int, width_cap: int = 256, cmap_dim: int = 64,
                 parents: list[int] | None = None):
        super().__init__()
        layers, c = [], cin
        while side > 4:
            cout = min(width_cap, c * 2)
            layers += [spectral_norm(nn.Conv2d(c, cout, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c, side = cout, side // 2
        self.body = nn.Sequential(*layers)
        self.to_map = spectral_norm(nn.Conv2d(c, cmap_dim, 1))
        self.linear = spectral_norm(nn.Conv2d(cmap_dim, 1, 1))
        # sub-classes: class + sub-class embedding
        self.embed = HierEmbedding(parents, cmap_dim) if parents is not None else nn.Embedding(num_classes, cmap_dim)
        self.cmap_dim = cmap_dim

    def forward(self, x, label, cond: float = 1.0):  # cond: weight of the class projection (0 = unconditional)
        h = F.leaky_relu(self.to_map(self.body(x)), 0.2)             # [B, cmap, 4, 4]
        proj = (h * self.embed(label)[:, :, None, None]).sum(1) / math.sqrt(self.cmap_dim)
        return (self.linear(h).squeeze(1) + cond * proj).flatten(1)  # [B, 16]


class ProjectedDiscriminator(nn.Module):
    """(images [B, 3, S, S] in [-1, 1], label [B]) -> scores [B, n_scores] (hinge loss)."""

    def __init__(self, num_classes: int, image_size: int = 64, channels: int = 3, feature_size: int = 128,
                 projection_seed: int = 0, pixel_width: int = 0, guidance: bool = False, pooled: bool = False,
                 guidance_classes: int | None = None, mode_classes: list[int] | None = None,
                 pretrained: bool = True):
        super().__init__()
        if channels != 3:
            raise ValueError("the projected discriminator looks through an RGB ImageNet network: channels must be 3")
        if feature_size % 32 or feature_size < 128:
            raise ValueError(f"feature_size must be a multiple of 32 and >= 128, got {feature_size}")
        self.image_size, self.feature_size = image_size, feature_size
        # the network's tail (to the pooled 1280-d features): for guidance and feature-space mode seeking
        self.features = FrozenLiteFeatures(pretrained, pooled=guidance or pooled)
        self.classifier = None
        if guidance:  # frozen; its weights come from fit_guidance (and are saved with the discriminator)
            # of num_classes, or of guidance_classes where the heads are conditioned on sub-classes
            self.classifier = nn.Linear(1280, guidance_classes or num_classes).requires_grad_(False)
        self.project = RandomProjection(projection_seed)
        sides = [feature_size // s for s in (4, 8, 16, 32)]
        # mode_classes (sub-classes, num_classes of them): the heads judge the sub-class, the pixel D the class
        self.heads = nn.ModuleList([ScaleHead(c, s, num_classes, parents=mode_classes)
                                    for c, s in zip(MIXED_CHANNELS, sides)])
        if mode_classes is not None:
            self.register_buffer("mode_classes", torch.tensor(mode_classes, dtype=torch.long), persistent=False)
        self.has_modes = mode_classes is not None
        self.pixel = None
        if pixel_width:
            from .models import Discriminator

            self.pixel = Discriminator(max(mode_classes) + 1 if mode_classes else num_classes, image_size, channels,
                                       width=pixel_width)

    def forward(self, x, label, cond: float = 1.0) -> tuple[torch.Tensor, ...]:
        """-> (projected scores [B, 4 * 16],) or, with the pixel discriminator, (..., pixel scores [B]).
        ``cond``: weight of the class-conditional term of every branch (0 = unconditional)."""
        return self.scores_and_logits(x, label, logits=False, cond=cond)[0]

    def scores_and_logits(self, x, label, logits: bool = True,
                          cond: float = 1.0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """-> (the scores of :meth:`forward`, the guidance classifier's logits [B, K]; None without
        guidance or with ``logits=False``, which skips the network's tail)."""
        scores, logits, _ = self.scores_logits_pooled(x, label, logits=logits, cond=cond)
        return scores, logits

    def scores_logits_pooled(self, x, label, logits: bool = True, pooled: bool = False, cond: float = 1.0):
        """-> (scores, guidance logits [B, K] or None, the frozen network's pooled features [B, 1280]
        or None). The tail runs only where logits (with guidance) or ``pooled`` are asked for."""
        pixel_label = self.mode_classes[label] if self.has_modes else label
        pixel = (self.pixel(x, pixel_label, cond),) if self.pixel is not None else ()
        want_logits = logits and self.classifier is not None
        want_pooled = want_logits or pooled
        if want_pooled and self.features.tail is None:
            raise ValueError("this discriminator was built without the pooled features (guidance or pooled=True)")
        feats, feat_pooled = self.features(self.resize(x), pooled=want_pooled)
        maps = self.project(feats)
        out_logits = self.classifier(feat_pooled) if want_logits else None
        scores = (torch.cat([head(m, label, cond) for head, m in zip(self.heads, maps)], dim=1),) + pixel
        return scores, out_logits, (feat_pooled if pooled else None)

    def resize(self, x):  # [B, 3, S, S] -> [B, 3, F, F], the frozen network's input
        if x.shape[-1] == self.feature_size:
            return x
        return F.interpolate(x, size=(self.feature_size, self.feature_size), mode="bilinear", align_corners=False)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


@torch.no_grad()
def pooled_features(d: ProjectedDiscriminator, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """uint8 [N, 3, S, S] RGB -> the frozen network's pooled features [N, 1280] (float32)."""
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float() / 127.5 - 1
        out.append(d.features(d.resize(x).contiguous(memory_format=torch.channels_last))[1].float())
    return torch.cat(out)


def fit_guidance(d: ProjectedDiscriminator, images: torch.Tensor, labels: torch.Tensor, steps: int = 300,
                 weight_decay: float = 1e-2, seed: int = 0) -> dict:
    """Fit the guidance classifier of ``d``: multinomial logistic regression (L2 ``weight_decay``,
    full-batch Adam) on the frozen pooled features of the real images and their mirror images,
    standardised (the standardisation is folded into the linear layer). -> {"train_top1", "n"}.
    The default ``weight_decay`` was chosen on Grocery's val split (64 px images, 128 px features):
    val top-1 46.6 / 47.6 / 48.6 % at 1e-4 / 1e-3 / 1e-2."""
    if d.classifier is None:
        raise ValueError("this discriminator was built without guidance")
    feats = torch.cat([pooled_features(d, images), pooled_features(d, images.flip(3))])   # [2N, 1280]
    y = torch.cat([labels, labels]).long()
    mu, sd = feats.mean(0), feats.std(0) + 1e-4
    z = (feats - mu) / sd
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(z.shape[1], d.classifier.out_features)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(lin(z), y) + weight_decay * lin.weight.pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():  # logits = W (f - mu) / sd + b  ->  W' f + b'
        w = lin.weight / sd
        d.classifier.weight.copy_(w)
        d.classifier.bias.copy_(lin.bias - w @ mu)
        top1 = float((d.classifier(feats).argmax(1) == y).float().mean())
    return {"train_top1": top1, "n": int(len(y))}
