"""skulens runtime SDK: classify product images with a self-describing ONNX model.

Depends on numpy, opencv-python-headless and onnxruntime only (never torch).
"""
from ._classifier import Category, ClassificationResult, ClassifierOptions, ImageClassifier
from ._dataset import load_dataset
from ._errors import (DatasetError, GalleryError, ImageError, ImageTooLargeError, MissingExtraError, ModelError,
                      SkulensError)
from ._gallery import AddReport, ProductGallery
from ._generator import GeneratorOptions, ImageGenerator
from ._image import decode_image
from ._preprocess import PreprocessConfig
from ._triton_client import TritonClassifier
from ._stream import FrameClassifier, FrameClassifierOptions, FrameResult, RunningMode, RunningModeError, StreamError
from ._version import __version__

__all__ = [
    "ImageClassifier", "ClassifierOptions", "ClassificationResult", "Category",
    "PreprocessConfig", "decode_image", "load_dataset",
    "SkulensError", "ImageError", "ImageTooLargeError", "ModelError", "DatasetError", "MissingExtraError", "GalleryError",
    "ProductGallery", "AddReport",
    "FrameClassifier", "FrameClassifierOptions", "FrameResult", "RunningMode", "RunningModeError", "StreamError",
    "TritonClassifier",
    "ImageGenerator", "GeneratorOptions",
    "__version__",
]
