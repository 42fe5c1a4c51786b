"""Every registered model: shapes, BatchNorm folding, ONNX export parity."""
import numpy as np
import pytest
import torch

from export import torch_to_onnx
from export._onnx import parity
from training import create_model, list_models
from training.models import fold_batchnorm


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
