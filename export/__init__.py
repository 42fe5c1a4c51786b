"""skulens export: checkpoint -> self-describing ONNX (fp32 and INT8). Needs ``skulens[export]``."""
from training import import_or_extra as _import_or_extra

__all__ = ["export_checkpoint", "export_classifier", "torch_to_onnx", "quantize_int8", "choose_activation_type",
           "write_metadata", "int8_path_for"]
_WHERE = {"export_checkpoint": "_pipeline", "export_classifier": "_pipeline", "int8_path_for": "_pipeline", "torch_to_onnx": "_onnx",
          "write_metadata": "_onnx", "quantize_int8": "_quantize", "choose_activation_type": "_quantize"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    module = _import_or_extra(f"export.{_WHERE[name]}", "export", deps=("torch", "onnx", "onnxscript"))
    return getattr(module, name)
