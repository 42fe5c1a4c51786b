"""Torch-free helpers that skulens's own layers share: the small internal API of the runtime.

``skulens.training``, ``skulens.export``, ``skulens.bench`` and ``skulens.cli`` import the
runtime through ``skulens`` (the public names) and this module only, never through its private
``skulens._*`` modules. It is not a user API: names here may change between releases.

- files: ``atomic_write*`` (temp file + fsync + rename), ``sha256_file``, ``proc_bytes`` (Linux /proc
  sizes), artefact names (``int8_path_for``, ``rejected_path_for``, ``report_path_for``);
- extras: ``require_extra``, ``lazy_exports`` (a package ``__getattr__`` naming the extra);
- configs: ``option`` (a field with its help text), ``add_dataclass_flags``, ``dataclass_from_args``,
  ``config_to_dict``, ``config_from_dict``;
- timing: ``cpu_seconds``, ``interleaved_samples``, ``time_callables``, ``ort_runner``, ``time_models``;
- data and evaluation: ``IMAGE_SUFFIXES``, ``Dataset``, ``Sample``, ``subset``, ``write_split_lists``,
  ``holdout``, ``duplicates_across_splits``, ``MIN_PHOTOS_PER_CLASS``, ``evaluate``,
  ``evaluate_samples``, ``accuracy_report``, ``label_mapping``, ``coarse_index``, ``softmax``,
  ``confusion_matrix``, ``eval_summary_line``, ``write_eval_report`` (eval's CSV/Markdown/PNG);
- images: ``read_header`` (an encoded image's format and declared size, before decoding);
- models: ``ModelMetadata``, ``encode_metadata``, ``decode_metadata``, ``open_model``,
  ``session_options``, ``OpenVinoSession``, ``openvino_config`` (the optional OpenVINO backend);
  generators: ``GenerationError``, ``make_grid``, ``write_png``;
- galleries: ``ExactIndex``, ``HnswIndex``, ``hnsw_available``, ``auroc``, ``selective_report``,
  ``threshold_for_precision``.
"""
from ._artifacts import int8_path_for, rejected_path_for, report_path_for
from ._backend_openvino import OpenVinoSession, openvino_config
from ._classifier import softmax
from ._config import add_dataclass_flags, config_from_dict, config_to_dict, dataclass_from_args, field_help, option
from ._dataset import (IMAGE_SUFFIXES, MIN_PHOTOS_PER_CLASS, Dataset, Sample, duplicates_across_splits, holdout,
                       subset, write_split_lists)
from ._errors import lazy_exports, require_extra
from ._evaluate import (accuracy_report, coarse_index, confusion_matrix, eval_summary_line, evaluate,
                        evaluate_samples, label_mapping, write_eval_report)
from ._generator import GenerationError, make_grid, write_png
from ._headers import read_header
from ._io import atomic_write, atomic_write_bytes, atomic_write_text, proc_bytes, sha256_file
from ._metadata import ModelMetadata, decode_metadata, encode_metadata
from ._search import ExactIndex, HnswIndex, hnsw_available
from ._session import open_model, session_options
from ._timing import cpu_seconds, interleaved_samples, ort_runner, time_callables, time_models
from ._unknown import auroc, selective_report, threshold_for_precision

__all__ = [
    "int8_path_for", "rejected_path_for", "report_path_for",
    "softmax",
    "add_dataclass_flags", "config_from_dict", "config_to_dict", "dataclass_from_args", "field_help", "option",
    "IMAGE_SUFFIXES", "MIN_PHOTOS_PER_CLASS", "Dataset", "Sample", "duplicates_across_splits", "holdout", "subset",
    "write_split_lists",
    "lazy_exports", "require_extra",
    "accuracy_report", "coarse_index", "confusion_matrix", "eval_summary_line", "evaluate", "evaluate_samples",
    "label_mapping", "write_eval_report",
    "GenerationError", "make_grid", "write_png",
    "read_header",
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "proc_bytes", "sha256_file",
    "ModelMetadata", "decode_metadata", "encode_metadata",
    "ExactIndex", "HnswIndex", "hnsw_available",
    "open_model", "session_options", "OpenVinoSession", "openvino_config",
    "cpu_seconds", "interleaved_samples", "ort_runner", "time_callables", "time_models",
    "auroc", "selective_report", "threshold_for_precision",
]
