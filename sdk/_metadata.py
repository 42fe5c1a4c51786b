"""The skulens metadata schema carried in an ONNX file's ``metadata_props``.

Keys are prefixed ``skulens.``; values are strings (JSON for structured ones). Export writes
them with :func:`encode_metadata`; the SDK reads them with :func:`read_metadata`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ._errors import ModelError
from ._preprocess import PreprocessConfig

SCHEMA_VERSION = 1
PREFIX = "skulens."
KINDS = ("classifier", "generator")

# keys whose values are JSON documents, and the JSON type each must have
_JSON_KEYS = {"labels": list, "preprocess": dict, "io": dict, "metrics": dict, "quantization": dict,
              "provenance": dict, "generator": dict, "coarse_labels": list, "embedding": dict, "unknown": dict}
MAX_VALUE_BYTES = 16 << 20   # one metadata value; real ones are a few kB (labels of 100k products: ~3 MB)


@dataclass(frozen=True)
class ModelMetadata:
    """Parsed skulens metadata. ``preprocess`` is None for generators."""

    kind: str
    labels: tuple[str, ...]
    model_name: str
    io: dict
    schema_version: int = SCHEMA_VERSION
    preprocess: PreprocessConfig | None = None
    metrics: dict = field(default_factory=dict)
    quantization: dict | None = None
    parent_sha256: str | None = None
    provenance: dict = field(default_factory=dict)
    generator: dict | None = None  # z_dim, output size, channel order, value range (generators)
    coarse_labels: tuple[str, ...] | None = None  # coarse group of each label, when known
    # the second output, when exported: {"output", "dim", "source", "normalized", "metric"}
    embedding: dict | None = None
    # the calibrated "none of these" rule of the classifier: {"score", "threshold", "target_precision", ...}
    unknown: dict | None = None


def encode_metadata(meta: ModelMetadata) -> dict[str, str]:
    """ModelMetadata -> {"skulens.key": "string"} ready for onnx metadata_props."""
    out = {
        "schema_version": str(meta.schema_version),
        "kind": meta.kind,
        "model_name": meta.model_name,
        "labels": json.dumps(list(meta.labels)),
        "io": json.dumps(meta.io, sort_keys=True),
        "metrics": json.dumps(meta.metrics, sort_keys=True),
        "provenance": json.dumps(meta.provenance, sort_keys=True),
    }
    if meta.preprocess is not None:
        out["preprocess"] = meta.preprocess.to_json()
    if meta.quantization is not None:
        out["quantization"] = json.dumps(meta.quantization, sort_keys=True)
    if meta.parent_sha256:
        out["parent_sha256"] = meta.parent_sha256
    if meta.generator is not None:
        out["generator"] = json.dumps(meta.generator, sort_keys=True)
    if meta.coarse_labels is not None:
        out["coarse_labels"] = json.dumps(list(meta.coarse_labels))
    for key in ("embedding", "unknown"):
        if getattr(meta, key) is not None:
            out[key] = json.dumps(getattr(meta, key), sort_keys=True)
    return {PREFIX + k: v for k, v in out.items()}


def decode_metadata(props: dict[str, str], source: str = "model") -> ModelMetadata:
    """{"skulens.key": "string"} -> ModelMetadata, with errors naming ``source``."""
    raw = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    if not raw:
        raise ModelError(f"{source}: no skulens metadata in this ONNX file; export it with "
                         "`skulens export` so labels and preprocessing travel with the model")
    missing = [k for k in ("schema_version", "kind", "labels", "io") if k not in raw]
    if missing:
        raise ModelError(f"{source}: skulens metadata is missing {missing}")
    try:
        version = int(raw["schema_version"])
    except ValueError:
        raise ModelError(f"{source}: bad schema_version {raw['schema_version']!r}") from None
    if version > SCHEMA_VERSION:
        raise ModelError(f"{source}: metadata schema {version} is newer than this skulens "
                         f"supports ({SCHEMA_VERSION}); upgrade skulens")
    vals: dict[str, Any] = {key: _json_value(raw[key], key, _JSON_KEYS[key], source)
                            for key in _JSON_KEYS if key in raw}
    kind = raw["kind"]
    if kind not in KINDS:
        raise ModelError(f"{source}: unknown model kind {kind!r} (expected one of {KINDS})")
    labels = vals["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{source}: metadata 'labels' must be a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise ModelError(f"{source}: metadata 'labels' has duplicates")
    preprocess = None
    if "preprocess" in raw:
        preprocess = _contract(vals["preprocess"], source)
    elif kind == "classifier":
        raise ModelError(f"{source}: classifier metadata has no preprocessing contract")
    coarse = vals.get("coarse_labels")
    if coarse is not None and (len(coarse) != len(labels) or not all(isinstance(x, str) for x in coarse)):
        raise ModelError(f"{source}: metadata 'coarse_labels' must give one string per label")
    embedding = vals.get("embedding")
    if embedding is not None and (not isinstance(embedding, dict) or not isinstance(embedding.get("output"), str)
                                  or not isinstance(embedding.get("dim"), int) or embedding["dim"] < 1):
        raise ModelError(f"{source}: metadata 'embedding' must name its output and a positive dim")
    unknown = vals.get("unknown")
    if unknown is not None and (not isinstance(unknown, dict)
                                or not isinstance(unknown.get("threshold"), (int, float))):
        raise ModelError(f"{source}: metadata 'unknown' must carry a numeric threshold")
    return ModelMetadata(
        kind=kind, labels=tuple(labels), model_name=raw.get("model_name", "unknown"),
        io=vals["io"], schema_version=version, preprocess=preprocess,
        metrics=vals.get("metrics", {}), quantization=vals.get("quantization"),
        parent_sha256=raw.get("parent_sha256"), provenance=vals.get("provenance", {}),
        generator=vals.get("generator"),
        coarse_labels=tuple(coarse) if coarse is not None else None,
        embedding=embedding, unknown=unknown,
    )


def _json_value(text: str, key: str, kind: type, source: str):
    """One JSON metadata value, bounded in size and of the expected type; nesting too deep for
    the JSON decoder (a depth bomb) is its RecursionError, refused like any invalid JSON."""
    if len(text) > MAX_VALUE_BYTES:
        raise ModelError(f"{source}: metadata '{key}' is {len(text)} bytes (more than {MAX_VALUE_BYTES}): refused")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelError(f"{source}: metadata '{key}' is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ModelError(f"{source}: metadata '{key}' must be a JSON {'object' if kind is dict else 'array'}, "
                         f"not {type(value).__name__}")
    return value


def _contract(data: dict, source: str) -> PreprocessConfig:
    """The preprocessing contract, refused with a ModelError when any field is missing, of the
    wrong type or not finite (a NaN std would make every result silently empty)."""
    try:
        pre = PreprocessConfig.from_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"{source}: metadata 'preprocess' is not a valid preprocessing contract: {exc}") from None
    numbers = [*pre.mean, *pre.std]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or min(pre.std) <= 0:
        raise ModelError(f"{source}: metadata 'preprocess' needs finite mean and positive finite std, "
                         f"got mean {pre.mean}, std {pre.std}")
    return pre
