"""The skulens metadata schema carried in an ONNX file's ``metadata_props``.

Keys are prefixed ``skulens.``; values are strings (JSON for structured ones). Export writes
them with :func:`encode_metadata`; the SDK reads them with :func:`read_metadata`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._errors import ModelError
from ._preprocess import PreprocessConfig

SCHEMA_VERSION = 1
PREFIX = "skulens."
KINDS = ("classifier", "generator")

# keys whose values are JSON documents
_JSON_KEYS = ("labels", "preprocess", "io", "metrics", "quantization", "provenance", "generator",
              "coarse_labels", "embedding", "unknown")


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
    vals: dict[str, Any] = {}
    for key in _JSON_KEYS:
        if key in raw:
            try:
                vals[key] = json.loads(raw[key])
            except json.JSONDecodeError as exc:
                raise ModelError(f"{source}: metadata '{key}' is not valid JSON: {exc}") from None
    kind = raw["kind"]
    if kind not in KINDS:
        raise ModelError(f"{source}: unknown model kind {kind!r} (expected one of {KINDS})")
    labels = vals["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{source}: metadata 'labels' must be a non-empty list of strings")
    preprocess = None
    if "preprocess" in raw:
        preprocess = PreprocessConfig.from_dict(vals["preprocess"])
    elif kind == "classifier":
        raise ModelError(f"{source}: classifier metadata has no preprocessing contract")
    coarse = vals.get("coarse_labels")
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
