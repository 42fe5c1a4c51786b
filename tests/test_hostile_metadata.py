"""Tampered model metadata: every malformed skulens.* value of a real exported model is refused
with a ModelError naming the key, never a raw TypeError/RecursionError or a model that loads and
returns garbage (issue #12, items 6 and 9)."""
from __future__ import annotations

import json

import onnx
import pytest

from skulens import ImageClassifier, ImageGenerator, ModelError, SkulensError


def _props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _with(path, out, **changes) -> str:
    """``path`` with its metadata values replaced (None deletes a key), saved to ``out``."""
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        key = "skulens." + key
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(out))
    return str(out)


def _contract(path, **changes) -> str:
    pre = json.loads(_props(path)["skulens.preprocess"])
    pre.update(changes)
    return json.dumps(pre)


DEEP = "[" * 200_000 + "]" * 200_000
CASES = {
    "preprocess null": dict(preprocess="null"),
    "preprocess a list": dict(preprocess="[1, 2]"),
    "preprocess an empty object": dict(preprocess="{}"),
    "preprocess not JSON": dict(preprocess="{'size': 3"),
    "preprocess 200k deep": dict(preprocess=DEEP),
    "labels 200k deep": dict(labels=DEEP),
    "metrics 200k deep": dict(metrics="{" + '"a":{' * 100_000 + "}" * 100_001),
    "labels a string": dict(labels='"apple"'),
    "labels empty": dict(labels="[]"),
    "labels numbers": dict(labels="[1, 2, 3, 4, 5, 6]"),
    "labels duplicated": dict(labels=json.dumps(["a", "a", "b", "c", "d", "e"])),
    "labels 17 MB": dict(labels=json.dumps(["x" * 1000] * 17_000)),
    "io a list": dict(io="[]"),
    "io missing": dict(io=None),
    "kind unknown": dict(kind="detector"),
    "kind missing": dict(kind=None),
    "schema version text": dict(schema_version="one"),
    "schema version from the future": dict(schema_version="999"),
    "coarse labels wrong count": dict(coarse_labels='["Fruit"]'),
    "embedding without output": dict(embedding='{"dim": 8}'),
    "embedding dim zero": dict(embedding='{"output": "embedding", "dim": 0}'),
    "unknown without threshold": dict(unknown='{"score": "softmax"}'),
    "unknown a number": dict(unknown="0.5"),
    "quantization a string": dict(quantization='"int8"'),
}
CONTRACT_CASES = {
    "NaN mean": dict(mean=[float("nan")] * 3),
    "inf std": dict(std=[float("inf")] * 3),
    "zero std": dict(std=[0, 0, 0]),
    "negative std": dict(std=[-1, 1, 1]),
    "mean of 2 channels": dict(mean=[0.5, 0.5]),
    "size text": dict(input_size="big"),
    "size negative": dict(input_size=[-32, -32]),
    "unknown colour order": dict(color_order="CMYK"),
    "unknown resize": dict(resize="magic"),
    "dtype int64": dict(dtype="int64"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_metadata_is_a_model_error(case, tiny_models, tmp_path):
    bad = _with(tiny_models[1], tmp_path / "bad.onnx", **CASES[case])
    with pytest.raises(ModelError):
        ImageClassifier.from_path(bad)


@pytest.mark.parametrize("case", sorted(CONTRACT_CASES))
def test_tampered_contract_is_a_model_error(case, tiny_models, tmp_path):
    fp32 = tiny_models[0]
    bad = _with(fp32, tmp_path / "bad.onnx", preprocess=_contract(fp32, **CONTRACT_CASES[case]))
    with pytest.raises(ModelError, match="preprocess|contract|mean|std"):
        ImageClassifier.from_path(bad)


@pytest.mark.parametrize("case", ["generator null", "generator 200k deep", "labels a string"])
def test_tampered_generator_metadata_is_refused(case, tiny_gen, tmp_path):
    change = {"generator null": dict(generator="null"), "generator 200k deep": dict(generator=DEEP),
              "labels a string": dict(labels='"x"')}[case]
    bad = _with(tiny_gen[0], tmp_path / "bad.onnx", **change)
    with pytest.raises(SkulensError):
        ImageGenerator.from_path(bad)
