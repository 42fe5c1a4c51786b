"""skulens export: checkpoint -> self-describing ONNX (fp32 and INT8). Needs ``skulens[export]``.

    from skulens.export import ExportConfig, export
    report = export(ExportConfig(checkpoint="runs/mine/best.pt", out="mine.onnx", int8=True))
"""
from skulens.internal import lazy_exports

__all__ = ["ExportConfig", "export", "export_classifier", "export_generator", "torch_to_onnx", "quantize_int8",
           "choose_activation_type", "write_metadata"]
__getattr__ = lazy_exports(__name__, {"ExportConfig": "config", "export": "_pipeline", "export_classifier": "_pipeline",
                                      "export_generator": "_gan", "torch_to_onnx": "_onnx",
                                      "write_metadata": "_onnx", "quantize_int8": "_quantize",
                                      "choose_activation_type": "_quantize"},
                           extra="export", deps=("torch", "onnx", "onnxscript"))
