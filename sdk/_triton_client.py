"""TritonClassifier: the ImageClassifier API with the model running on a Triton Inference Server.

    with TritonClassifier.from_server("localhost:8000", "mine_int8") as clf:
        print(clf.classify("photo.jpg").top)

Decoding and preprocessing stay local and follow the model's own contract (``skulens.*``
parameters that ``skulens export --triton-repo`` writes into config.pbtxt, or the metadata of
a local copy of the model via ``metadata_from``); only the preprocessed tensor batch (float32,
or uint8 pixels for models that normalise inside) travels to the server (``tritonclient.http``,
binary tensor extension). Needs ``pip install 'skulens[triton]'``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from ._classifier import ClassifierOptions, ImageClassifier
from ._errors import ModelError, require_extra
from ._metadata import ModelMetadata
from ._preprocess import PreprocessConfig


_WIRE_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8"}


def _param(config: dict, key: str):
    value = (config.get("parameters") or {}).get(key)
    return value.get("string_value") if isinstance(value, dict) else None


class _TritonSession:
    """The slice of onnxruntime.InferenceSession that ImageClassifier uses, served by Triton."""

    def __init__(self, client, http, model_name: str, version: str, config: dict, headers, binary: bool):
        self._client, self._http, self._name, self._version = client, http, model_name, version
        self._headers, self._binary = headers, binary
        batched = int(config.get("max_batch_size", 0)) > 0

        def io(t):
            dims = [int(d) for d in t.get("dims", [])]
            return SimpleNamespace(name=t["name"], shape=(["batch"] if batched else []) + dims,
                                   type=t.get("data_type"))

        self._inputs = [io(t) for t in config.get("input", [])]
        self._outputs = [io(t) for t in config.get("output", [])]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, output_names, feed: dict):
        (name, x), = feed.items()
        x = np.ascontiguousarray(x)
        if x.dtype not in _WIRE_TYPES:
            raise ModelError(f"triton model {self._name!r}: cannot send a {x.dtype} tensor")
        inp = self._http.InferInput(name, list(x.shape), _WIRE_TYPES[x.dtype])
        inp.set_data_from_numpy(x, binary_data=self._binary)
        outs = [self._http.InferRequestedOutput(n, binary_data=self._binary) for n in output_names]
        try:
            result = self._client.infer(self._name, [inp], model_version=self._version, outputs=outs,
                                        headers=self._headers)
        except Exception as exc:  # InferenceServerException, connection errors
            raise ModelError(f"triton model {self._name!r}: inference failed: {exc}") from exc
        return [result.as_numpy(n) for n in output_names]

    def close(self) -> None:
        self._client.close()


class TritonClassifier(ImageClassifier):
    """An ImageClassifier whose ``run`` happens on a Triton server (see the module doc)."""

    @classmethod
    def from_server(cls, url: str, model_name: str, options: ClassifierOptions | None = None, *,
                    model_version: str = "", metadata_from=None, headers: dict | None = None,
                    timeout_s: float = 60.0, binary: bool = True) -> "TritonClassifier":
        """Connect to Triton at ``url`` (``host:port`` of its HTTP endpoint) and check the model.

        ``metadata_from``: a local copy of the ONNX model to take labels and preprocessing from
        (for repositories written without the skulens parameters)."""
        http = require_extra("tritonclient.http", "triton")
        options = options or ClassifierOptions()
        where = f"triton://{url}/{model_name}"
        try:
            client = http.InferenceServerClient(url=url, connection_timeout=timeout_s, network_timeout=timeout_s)
        except Exception as exc:
            raise ModelError(f"{where}: cannot create a Triton client ({exc})") from exc
        try:
            if not client.is_model_ready(model_name, model_version, headers=headers):
                raise ModelError(f"{where}: the model is not ready on the server")
            config = client.get_model_config(model_name, model_version, headers=headers)
        except ModelError:
            client.close()
            raise
        except Exception as exc:
            client.close()
            raise ModelError(f"{where}: cannot reach the model on the Triton server ({exc})") from exc
        try:
            meta = cls._metadata(config, where, metadata_from)
            session = _TritonSession(client, http, model_name, model_version, config, headers, binary)
            max_batch = int(config.get("max_batch_size", 0))
            if max_batch > 0 and options.max_batch > max_batch:
                options = replace(options, max_batch=max_batch)
            return cls(session, meta, options, path=where)
        except BaseException:
            client.close()
            raise

    @staticmethod
    def _metadata(config: dict, where: str, metadata_from) -> ModelMetadata:
        if metadata_from is not None:
            from ._session import open_model

            return open_model(metadata_from, num_threads=1, expect_kind="classifier")[1]
        labels, pre = _param(config, "skulens.labels"), _param(config, "skulens.preprocess")
        if labels is None or pre is None:
            raise ModelError(f"{where}: the model config has no skulens.labels / skulens.preprocess "
                             "parameters (write it with `skulens export --triton-repo`), or pass "
                             "metadata_from= a local copy of the ONNX model")
        try:
            labels = tuple(json.loads(labels))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"{where}: skulens.labels is not a JSON list ({exc})") from None
        return ModelMetadata(kind="classifier", labels=labels,
                             model_name=_param(config, "skulens.model_name") or config.get("name", "unknown"),
                             io={"inputs": config.get("input", []), "outputs": config.get("output", [])},
                             preprocess=PreprocessConfig.from_json(pre))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        super().close()
