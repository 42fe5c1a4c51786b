"""Export options (torch-free, so the CLI can build its flags without importing torch).

``skulens export`` and :func:`skulens.export.export` take this one dataclass; every field is a
flag with the help text below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from skulens.internal import option

DEFAULT_OPSET = 18
TTA_CHOICES = ("none", "flip")  # the values of ExportConfig.tta


@dataclass
class ExportConfig:
    checkpoint: str = option(help="a checkpoint written by `skulens train` (best.pt) or `skulens gan train` "
                                  "(last.pt)")
    out: str = option("model.onnx", "the fp32 ONNX file to write; INT8 goes beside it as <out>.int8.onnx "
                                    "(or <out>.int8.rejected.onnx when it fails its gate), the report as "
                                    "<out>.report.json")
    int8: bool = option(False, "also quantize to INT8 (static QDQ, per-channel weights), check it against fp32 "
                               "and ship it only if it passes the gate")
    data: str | None = option(None, "dataset for calibration, parity, evaluation and the unknown threshold "
                                    "(default: the one the checkpoint was trained on)")
    calibration_size: int = option(256, "training images (or GAN latents) used to calibrate INT8 activations")
    activation_type: Literal["auto", "u8", "s8"] = option("auto", "INT8 activation type; auto: time U8 and S8 "
                                                                  "on this CPU and keep the faster")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = option("minmax", "how activation ranges are "
                                                                                    "calibrated")
    eval_split: str = option("test", "split on which fp32 and INT8 top-1 are measured and the INT8 gate is "
                                     "checked (written into the model's metadata)")
    eval_limit: int | None = option(None, "evaluate on the first N images of the split only")
    opset: int = option(DEFAULT_OPSET, "ONNX opset (the dynamo exporter needs >= 18)")
    threads: int = option(0, "onnxruntime threads for parity and evaluation (0: all cores)")
    input_dtype: Literal["auto", "float32", "uint8"] = option(
        "auto", "model input: uint8 NHWC pixels with the normalisation folded into the first convolution, "
                "float32 NCHW tensors, or auto (uint8 where the fold is exact)")
    input_size: int = option(0, "side of the exported model's square input (0 = the size it was trained and "
                                "evaluated at); a model trained on smaller random crops can be more accurate "
                                "evaluated larger (README: chosen on val)")
    tta: Literal["none", "flip"] = option("none", "test-time augmentation inside the graph: flip = the mean of the "
                                                  "outputs for the image and its mirror image (about 2x the "
                                                  "compute; for models trained with flips)")
    embedding: bool = option(True, "a second output, the L2-normalised embedding used by product galleries")
    embedding_dim: int = option(0, "0: the pooled features; N: projected to N principal directions of the "
                                   "training images")
    embedding_colour: float = option(0.0, "weight of a 12 x 4 hue x saturation histogram appended to the "
                                          "embedding (0: off; new-product recall@1 +8 pp on val, +1 pp on "
                                          "the test split: README)")
    embedding_whiten: float = option(0.0, "whiten the embedding within products (WCCN), fitted on the labelled "
                                          "training images, with this shrinkage (0: off; chosen on val: 1 for "
                                          "fine-tuned, 0.3 for frozen ImageNet features; README)")
    unknown_precision: float = option(0.95, "choose the softmax threshold below which a result is 'unknown' on "
                                            "the val split for this precision (0: never unknown)")
    int8_max_drop_pp: float = option(1.0, "classifier INT8 gate: the largest top-1 drop vs fp32 (percentage "
                                          "points) beyond sampling noise on the eval split")
    psnr_min: float = option(30.0, "generator INT8 gate: the lowest PSNR (dB) of INT8 vs fp32 images")
    feature_max: float = option(0.10, "generator INT8 gate: the largest relative feature distance of INT8 vs "
                                      "fp32 images in a classifier's feature space")
    classifier: str | None = option(None, "generator INT8 gate: the classifier checkpoint for the feature check "
                                          "(default: the one recorded in the GAN checkpoint)")
    triton_repo: str | None = option(None, "also write a Triton Inference Server model repository here "
                                           "(classifiers only; the INT8 model when shipped, else fp32)")

    def __post_init__(self):
        """Settings that cannot work are refused before the checkpoint is read."""
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"tta must be one of {TTA_CHOICES}, got {self.tta!r}")
        if self.input_size and self.input_size < 8:
            raise ValueError(f"input_size must be 0 (as trained) or >= 8, got {self.input_size}")
        if not 0 <= self.embedding_colour <= 10:
            raise ValueError(f"embedding_colour must be a weight in [0, 10], got {self.embedding_colour}")
        if not 0 <= self.embedding_whiten <= 100:
            raise ValueError(f"embedding_whiten must be a shrinkage in [0, 100], got {self.embedding_whiten}")
        if self.embedding_whiten and self.embedding_dim:
            raise ValueError("embedding_dim and embedding_whiten do not combine: choose one")
        if not self.embedding and (self.embedding_dim or self.embedding_whiten or self.embedding_colour):
            raise ValueError("embedding_dim, embedding_whiten and embedding_colour shape the embedding output, "
                             "which --no-embedding leaves out")
