"""Every registered model: shapes, BatchNorm folding, ONNX export parity."""
import numpy as np
import pytest
import torch

from skulens.export import torch_to_onnx
from skulens.export._onnx import parity
from skulens.training import create_model, list_models
from skulens.training.models import fold_batchnorm, preprocess_facts


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_features(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=3, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert model.features(x).shape == (2, model.num_features)
    gray = create_model(name, num_classes=3, in_chans=1, input_size=32).eval()
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("name", list_models())
def test_batchnorm_folding_keeps_outputs_and_export_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, input_size=32)
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), ref, atol=1e-4, rtol=1e-4)
    path = torch_to_onnx(folded, (torch.zeros(2, 3, 32, 32),), tmp_path / f"{name}.onnx")
    assert parity(folded, path, x.numpy().astype(np.float32)) < 1e-4


def test_unknown_model_and_bad_class_count():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope", 3)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        create_model("seed_cnn", 1)


@pytest.mark.parametrize("name", list_models())
def test_uint8_input_folds_the_normalisation_exactly_where_the_stem_does_not_pad(name):
    """export._input: a model whose first conv has no padding takes uint8 NHWC pixels and gives
    the logits of the float model on normalised NCHW tensors; a padded first conv is refused."""
    from skulens.export._input import float_to_uint8_input, resolve_input_dtype
    from skulens import ModelError, PreprocessConfig

    model = _folded(name, num_classes=5, warm_steps=2)
    imagenet = PreprocessConfig(input_size=(32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    facts = preprocess_facts(name)  # EfficientNet-Lite: (x - 127) / 128, so a padded 127 is a normalised 0
    pre = _contract(name)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    pixels[:, :, -1] = 255  # the padded border is where a wrong fold shows
    if name.startswith("edge_resnet_patch") or facts:  # patchify stems, and the input-padding Lite models
        assert resolve_input_dtype("auto", model, pre) == "uint8"
        wrapped, u8_pre = float_to_uint8_input(model, pre)
        assert (u8_pre.dtype, u8_pre.layout) == ("uint8", "NHWC") and u8_pre.mean == pre.mean
        with torch.no_grad():
            ref = model(torch.from_numpy(pre.apply_batch(list(pixels))))
            got = wrapped(torch.from_numpy(u8_pre.apply_batch(list(pixels))))
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        assert resolve_input_dtype("float32", model, pre) == "float32"
    if not name.startswith("edge_resnet_patch"):  # ImageNet mean/std: no integer pixel normalises to 0
        assert resolve_input_dtype("auto", model, imagenet) == "float32"
        with pytest.raises(ValueError, match="uint8 input is not possible.*pads"):
            float_to_uint8_input(model, imagenet)
        with pytest.raises(ModelError, match="--input-dtype uint8 is not possible"):
            resolve_input_dtype("uint8", model, imagenet)


@pytest.mark.parametrize("name", list_models())
def test_int8_export_of_every_model_follows_its_fp32_export(name, tmp_path):
    """Every registered model goes through the deployment path: BatchNorm fold, the input it
    exports with (uint8 pixels where exact), static QDQ INT8; the INT8 logits track fp32."""
    import onnxruntime as ort

    from skulens.export import quantize_int8
    from skulens.export._input import onnx_input

    net, contract = onnx_input(_folded(name, num_classes=6, warm_steps=3), _contract(name))
    dtype = torch.uint8 if contract.dtype == "uint8" else torch.float32
    fp32 = torch_to_onnx(net, (torch.zeros(2, *contract.tensor_shape, dtype=dtype),), tmp_path / "m.onnx")
    images = list(np.random.default_rng(1).integers(0, 256, (24, 48, 40, 3), dtype=np.uint8))
    x = contract.apply_batch(images)
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", x[:16], activation_type="u8")
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)}
    a, b = (run[p].run(None, {"input": x[16:]})[0] for p in (fp32, int8))
    assert a.shape == b.shape == (8, 6)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def _folded(name, num_classes, warm_steps):
    """A registered model with non-trivial BatchNorm statistics, folded, in eval mode (32 px)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, input_size=32)
    model.train()
    for _ in range(warm_steps):
        model(torch.randn(8, 3, 32, 32))
    return fold_batchnorm(model.eval())


def _contract(name):
    """A 32 px contract with the normalisation the model declares (ImageNet mean/std if none)."""
    from skulens import PreprocessConfig

    facts = preprocess_facts(name)
    return PreprocessConfig(input_size=(32, 32), mean=facts.get("mean", (0.485, 0.456, 0.406)),
                            std=facts.get("std", (0.229, 0.224, 0.225)))


@pytest.mark.parametrize("name", list_models())
def test_model_card_names_real_layers(name):
    """Every registered model's card is data that matches the built model: the first conv
    reads the image channels, the classifier emits the classes, and --init-from skips it."""
    from torch import nn

    from skulens.training.models import create_model, input_conv, input_pad, model_card

    card = model_card(name)
    model = create_model(name, num_classes=7, **({"input_size": 64} if name == "seed_cnn" else {}))
    assert model.card == card and card.name == name
    conv = input_conv(model)
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == 3
    head = model.get_submodule(card.classifier)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert (input_pad(model) is not None) == (card.input_pad is not None)
    if card.mean is not None:
        assert len(card.mean) == len(card.std) == 3 and card.color_order in ("RGB", "BGR")
