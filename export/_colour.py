"""A colour descriptor for the embedding: a hue x saturation histogram of the photo.

Why. A gallery embedding has to tell apart products the network never trained on. Measured on
the retrieval protocol (``skulens.bench.retrieval``; a Lite0 fine-tuned on Grocery's 41
vegetable and packaged classes, the 40 new products being mostly fruit), most errors at k = 5
were colour confusions: Satsumas -> Lemon, Granny Smith -> Golden Delicious, Cantaloupe ->
Galia Melon, Peach -> Pomegranate. The pooled CNN features, trained to ignore lighting changes,
keep too little of the colour that tells those apart; 48 histogram numbers put it back. On
the validation split's new-product photos that gave +8.4 pp recall@1 at k = 5; on the test
split's photos (other stores) only +1.1 pp, so it is an option (``skulens export
--embedding-colour 1``), off by default.

What. Each pixel (after a ``pool`` x ``pool`` average, which keeps the cost small) gets its hue
h in [0, 6) sectors and saturation s in [0, 1] as in HSV, and counts in one of ``hue_bins`` x
``sat_bins`` bins: the same bins as OpenCV's ``calcHist`` of its HSV image (tests compare the
two). Hard bins beat triangular soft votes on the validation split (57.9 vs 54.6 % recall@1).
The image's histogram is the share of pixels per bin, square-rooted (the Hellinger map) and
L2-normalised. Everything is plain tensor arithmetic, so it exports to ONNX with the model and
runs in every backend; export._quantize keeps it float in the INT8 model.

The input is whatever the model's first layer reads: normalised float pixels ``(p / 255 -
mean) / std``, or the raw 0..255 pixels once export folds the normalisation into the first
convolution (:meth:`ColourHistogram.read_raw_pixels`), also in the patch-folded layout
[N, k * C, H, W / k] that export._input gives a patchify stem: there the ``pool`` x ``pool``
average is a (pool, pool / k) average followed by the mean over the k folded pixels.
"""
from __future__ import annotations

import torch
from torch import nn


class ColourHistogram(nn.Module):
    """[N, 3, H, W] image tensor -> [N, hue_bins * sat_bins], L2-normalised sqrt histogram."""

    def __init__(self, mean, std, color_order: str = "RGB", hue_bins: int = 12, sat_bins: int = 4, pool: int = 8):
        super().__init__()
        if color_order not in ("RGB", "BGR") or len(mean) != 3 or len(std) != 3:
            raise ValueError(f"a colour histogram needs 3-channel RGB or BGR input, got {color_order} {mean}")
        if hue_bins < 2 or sat_bins < 1 or pool < 1:
            raise ValueError(f"hue_bins >= 2, sat_bins >= 1 and pool >= 1, got {hue_bins}, {sat_bins}, {pool}")
        self.hue_bins, self.sat_bins, self.pool, self.width_fold = hue_bins, sat_bins, pool, 1
        self.rgb = (0, 1, 2) if color_order == "RGB" else (2, 1, 0)
        # p in [0, 1] = x * scale + shift: the inverse of the training normalisation
        self.register_buffer("scale", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("hue_ids", torch.arange(hue_bins, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("sat_ids", torch.arange(sat_bins, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def dim(self) -> int:
        return self.hue_bins * self.sat_bins

    def read_raw_pixels(self, width_fold: int = 1) -> None:
        """From now on the input is the raw 0..255 pixels (export._input's uint8 fold), with
        ``width_fold`` pixels of each row side by side in the channels."""
        self.scale.fill_(1.0 / 255.0)
        self.shift.zero_()
        self.width_fold = int(width_fold)

    def forward(self, x):  # [N, 3, H, W] (or [N, 3k, H, W / k]) -> [N, hue_bins * sat_bins]
        k = self.width_fold
        if k > 1 and self.pool % k == 0:  # the pool x pool average straight from the folded layout
            x = nn.functional.avg_pool2d(x, (self.pool, self.pool // k))  # [N, 3k, H / pool, W / pool]
            x = x.reshape(-1, k, 3, x.shape[2], x.shape[3]).sum(1) / k     # [N, 3, H / pool, W / pool]
        else:
            if k > 1:  # [N, 3k, H, W / k] -> [N, 3, H, W]
                n, _, h, w = x.shape
                x = x.permute(0, 2, 3, 1).reshape(n, h, w * k, 3).permute(0, 3, 1, 2)
            if self.pool > 1:  # averaging first: the affine map below touches pool^2 times fewer values
                x = nn.functional.avg_pool2d(x, self.pool)                  # [N, 3, H / pool, W / pool]
        p = x * self.scale + self.shift                                     # pixels in [0, 1]
        r, g, b = (p[:, i:i + 1] for i in self.rgb)                         # [N, 1, h, w] each
        mx, mn = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
        d = mx - mn
        sat = d / (mx + 1e-6)
        inv = 1.0 / (d + 1e-6)
        hue = torch.where(mx == r, (g - b) * inv, torch.where(mx == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
        hue = torch.where(hue < 0, hue + 6.0, hue)                          # [N, 1, h, w] in [0, 6)
        hue_bin = torch.floor(hue * (self.hue_bins / 6.0)).clamp(max=self.hue_bins - 1)  # [N, 1, h, w]
        sat_bin = torch.floor(sat * self.sat_bins).clamp(max=self.sat_bins - 1)
        votes_h = (hue_bin == self.hue_ids).float()                        # [N, hue_bins, h, w] one-hot
        votes_s = (sat_bin == self.sat_ids).float()                        # [N, sat_bins, h, w]
        joint = votes_h.unsqueeze(2) * votes_s.unsqueeze(1)                 # [N, hue_bins, sat_bins, h, w]
        joint = joint.reshape(-1, self.dim, joint.shape[3], joint.shape[4])  # [N, hue_bins * sat_bins, h, w]
        hist = nn.functional.adaptive_avg_pool2d(joint, 1).flatten(1)       # [N, hue_bins * sat_bins]
        hist = hist.sqrt()
        return hist / torch.linalg.vector_norm(hist, dim=1, keepdim=True).clamp_min(1e-12)
