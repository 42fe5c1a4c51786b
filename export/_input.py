"""The model's input: float32 NCHW as trained -> uint8 NHWC pixels with the normalisation inside.

A classifier trained on ``(pixel / 255 - mean) / std`` in NCHW can take the raw resized pixels
instead when its first convolution has no padding: then normalising is an affine map of each
input pixel that folds exactly into that convolution's weights and bias. The exported model
takes uint8 [N, H, W, C], which

- spares every caller the float conversion, normalisation and HWC -> CHW transpose;
- lets the INT8 model consume the pixels as they are: quantizing them with scale 1 and zero
  point 0 is the identity, so :func:`export._quantize.quantize_int8` removes the input's
  QuantizeLinear and onnxruntime's NHWC kernels need no input transpose either;
- moves 4x fewer bytes per image (servers, Triton).

With zero padding the fold would be wrong at the borders (a padded 0 is not a normalised 0),
so models whose first convolution pads keep float32 input. A model that pads in a separate
layer in front of it (the card's ``input_pad``, EfficientNet-Lite's TF "same" padding) folds
exactly when one integer pixel value normalises to 0 in every channel (127 for
``(x - 127) / 128``): the padding layer then pads the raw pixels with that value.

A patchify first convolution (stride = kernel width) gets one more exact rewrite: in NHWC the
``k`` pixels of a patch row are ``k * C`` contiguous bytes, so the image is reshaped (free) to
[N, H, W / k, k * C] and the convolution becomes a (kh, 1) one over ``k * C`` channels. Its
im2col then copies one run of ``k * C`` bytes per kernel row instead of ``k`` runs of ``C``:
the 4x4 stem of edge_resnet_patch took half the time in onnxruntime's INT8 kernels.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from skulens import ModelError, PreprocessConfig
from skulens.training.models import input_conv, input_pad

INPUT_DTYPES = ("auto", "float32", "uint8")


def uint8_input_problem(model: nn.Module, pre: PreprocessConfig) -> str | None:
    """Why ``model`` cannot take uint8 pixels exactly, or None when it can."""
    if pre.dtype != "float32" or pre.layout != "NCHW":
        return f"the model was trained on {pre.dtype} {pre.layout} tensors, not float32 NCHW"
    conv = input_conv(model)
    if conv is None:
        return f"{type(model).__name__} has no known first convolution"
    if conv.groups != 1 or conv.in_channels != pre.channels:
        return "its first convolution is grouped or does not read the image channels"
    pads = conv.padding != "valid" if isinstance(conv.padding, str) else any(p != 0 for p in conv.padding)
    if pads:
        return (f"its first convolution pads (padding {conv.padding}): the normalisation does not "
                "fold into it exactly")
    if input_pad(model) is not None and zero_pixel(pre) is None:
        return (f"it pads its input, and no pixel value normalises to 0 in every channel "
                f"(mean {pre.mean}): padded raw pixels would not match padded normalised ones")
    return None


def zero_pixel(pre: PreprocessConfig) -> float | None:
    """The integer pixel value that ``(p / 255 - mean) / std`` maps to 0 in every channel, or None."""
    values = {round(255.0 * m, 4) for m in pre.mean}
    if len(values) != 1:
        return None
    v = values.pop()
    return float(round(v)) if abs(v - round(v)) < 1e-3 and 0 <= v <= 255 else None


class Uint8Input(nn.Module):
    """uint8 [N, H, W, C] pixels -> the wrapped model, whose first convolution now normalises
    (and, with ``width_fold`` k > 1, reads [N, k * C, H, W / k]: see the module doc)."""

    def __init__(self, model: nn.Module, width_fold: int = 1):
        super().__init__()
        self.model, self.width_fold = model, width_fold

    def forward(self, x):  # x [N, H, W, C] uint8 -> logits [N, num_classes]
        if self.width_fold > 1:  # [N, H, W, C] -> [N, H, W / k, k * C], a free reshape
            x = x.reshape(-1, x.shape[1], x.shape[2] // self.width_fold, x.shape[3] * self.width_fold)
        return self.model(x.permute(0, 3, 1, 2).contiguous().float())


def _rearranges_pixels(model: nn.Module) -> bool:
    """True when the model moves pixels around before its first convolution (export._tta)."""
    from ._tta import FlipTTA

    return any(isinstance(m, FlipTTA) for m in model.modules())


def _fold_width_into_channels(conv: nn.Conv2d, width: int) -> int:
    """Rewrite a conv whose stride equals its kernel width (no padding) to read the image
    reshaped to [N, k * C, H, W / k]; returns k (1: left as it is)."""
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    if kw == 1 or sw != kw or conv.dilation != (1, 1) or width % kw:
        return 1
    w = conv.weight.detach()  # [O, C, kh, kw] -> [O, kw * C, kh, 1]: channel j = kw_index * C + c
    conv.weight = nn.Parameter(w.permute(0, 3, 1, 2).reshape(w.shape[0], kw * w.shape[1], kh, 1).contiguous(),
                               requires_grad=False)
    conv.in_channels, conv.kernel_size, conv.stride = kw * conv.in_channels, (kh, 1), (sh, 1)
    return kw


@torch.no_grad()
def float_to_uint8_input(model: nn.Module, pre: PreprocessConfig) -> tuple[nn.Module, PreprocessConfig]:
    """A copy of ``model`` (BatchNorm already folded, eval mode) that takes the uint8 NHWC pixels
    of the returned contract, and that contract. ValueError when the fold would not be exact."""
    problem = uint8_input_problem(model, pre)
    if problem:
        raise ValueError(f"uint8 input is not possible for this model: {problem}")
    model = copy.deepcopy(model).eval()
    conv = input_conv(model)
    # conv(x_norm), x_norm = p * a - m / s with a = 1 / (255 s): weights w * a, bias b - sum(w * m / s)
    scale = torch.tensor([1.0 / (255.0 * s) for s in pre.std], dtype=conv.weight.dtype).view(1, -1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(pre.mean, pre.std)], dtype=conv.weight.dtype).view(1, -1, 1, 1)
    w = conv.weight.detach().clone()
    bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    conv.weight.copy_(w * scale)
    conv.bias = nn.Parameter(bias - (w * shift).sum(dim=(1, 2, 3)), requires_grad=False)
    if input_pad(model) is not None:  # pad raw pixels with the value that normalises to 0
        input_pad(model).value = zero_pixel(pre)
    # the fold regroups pixels by patch: only where they reach the convolution as they are (a
    # mirror image for test-time augmentation must flip pixels, not patches)
    fold = 1 if _rearranges_pixels(model) else _fold_width_into_channels(conv, pre.input_size[1])
    for m in model.modules():  # export._colour's histogram now reads the raw (folded) pixels too
        if callable(getattr(m, "read_raw_pixels", None)):
            m.read_raw_pixels(fold)
    return Uint8Input(model, fold).eval(), dataclasses.replace(pre, dtype="uint8", layout="NHWC")


def resolve_input_dtype(input_dtype: str, model: nn.Module, pre: PreprocessConfig) -> str:
    """"auto" -> "uint8" where the fold is exact, else "float32". ModelError when "uint8" is
    asked of a model that cannot take it."""
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
    problem = uint8_input_problem(model, pre)
    if input_dtype == "auto":
        return "float32" if problem else "uint8"
    if input_dtype == "uint8" and problem:
        raise ModelError(f"--input-dtype uint8 is not possible for this model: {problem}; "
                         "use float32 (or a model with a patchify stem, e.g. edge_resnet_patch)")
    return input_dtype


def onnx_input(model: nn.Module, pre: PreprocessConfig,
               input_dtype: str = "auto") -> tuple[nn.Module, PreprocessConfig]:
    """The module to export and the contract its ONNX file declares: ``model`` and ``pre`` as
    trained, or their uint8-input version (see :func:`resolve_input_dtype`)."""
    if resolve_input_dtype(input_dtype, model, pre) == "uint8":
        return float_to_uint8_input(model, pre)
    return model, pre
