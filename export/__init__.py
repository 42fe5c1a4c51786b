"""skulens export: checkpoint -> self-describing ONNX (fp32 and INT8). Needs ``skulens[export]``."""
from sdk._errors import require_extra

require_extra("torch", "export")
require_extra("onnx", "export")
require_extra("onnxscript", "export")

from ._onnx import torch_to_onnx, write_metadata  # noqa: E402
from ._pipeline import export_classifier, int8_path_for  # noqa: E402
from ._quantize import choose_activation_type, quantize_int8  # noqa: E402

__all__ = ["export_classifier", "torch_to_onnx", "quantize_int8", "choose_activation_type",
           "write_metadata", "int8_path_for"]
