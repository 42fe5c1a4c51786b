"""Triton: the model repository checked with Triton's own config schema, and the SDK's Triton
client talking the KServe v2 HTTP protocol (tritonclient.http) to a loopback stand-in server
that runs the repository's model.onnx with onnxruntime (no tritonserver binary here)."""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("tritonclient.http")
from google.protobuf import json_format, text_format  # noqa: E402

from skulens.export._triton import _quote, model_config_pb2, write_triton_repo  # noqa: E402
from skulens import ClassifierOptions, ImageClassifier, MissingExtraError, ModelError, TritonClassifier  # noqa: E402
from skulens.cli import main as cli_main  # noqa: E402
from skulens._metadata import decode_metadata  # noqa: E402


def parse_config(path) -> object:
    return text_format.Parse(Path(path).read_text(), model_config_pb2().ModelConfig())


@pytest.fixture(scope="module")
def repo(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton_models")
    return write_triton_repo(tiny_models[1], root, intra_op_threads=1, preferred_batch_sizes=(8, 16, 64)), tiny_models[1]


def test_config_parses_with_tritons_schema_and_matches_the_onnx_model(repo):
    written, int8 = repo
    pb2 = model_config_pb2()
    cfg = parse_config(written["config"])
    model = onnx.load(int8)
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    (inp,), (out, emb) = model.graph.input, model.graph.output  # logits, and the gallery embedding
    assert cfg.name == written["name"] == "tiny_int8" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 32
    assert [i.name for i in cfg.input] == [inp.name] and [o.name for o in cfg.output] == [out.name, emb.name]
    assert list(cfg.output[1].dims) == [meta.embedding["dim"]] and not cfg.output[1].label_filename
    assert list(cfg.input[0].dims) == [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [32, 32, 3]
    assert list(cfg.output[0].dims) == [d.dim_value for d in out.type.tensor_type.shape.dim[1:]] == [6]
    assert inp.type.tensor_type.shape.dim[0].dim_param, "batch axis is dynamic in the ONNX model"
    assert cfg.input[0].data_type == pb2.TYPE_UINT8, "uint8 pixels travel, as the ONNX model takes them"
    assert cfg.output[0].data_type == pb2.TYPE_FP32
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16], "sizes over max_batch_size are left out"
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["intra_op_thread_count"] == "1" and params["inter_op_thread_count"] == "1"
    assert json.loads(params["skulens.labels"]) == list(meta.labels)
    assert json.loads(params["skulens.preprocess"]) == meta.preprocess.to_dict()
    assert cfg.output[0].label_filename == "labels.txt"
    labels = (Path(written["config"]).parent / "labels.txt").read_text().splitlines()
    assert labels == list(meta.labels)
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert Path(written["model"]).relative_to(Path(written["repository"])) == Path("tiny_int8/1/model.onnx")
    assert digest(written["model"]) == digest(int8)


def test_text_format_strings_survive_quotes_and_unicode():
    tricky = 'Crème "brûlée" \\ 1\t2 — ☕'
    cfg = text_format.Parse(f"parameters {{ key: {_quote('k')} value: {{ string_value: {_quote(tricky)} }} }}",
                            model_config_pb2().ModelConfig())
    assert cfg.parameters["k"].string_value == tricky


def test_cli_export_writes_a_triton_repo(tiny_run, grocery_subset, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli_main(["export", str(tiny_run[0] / "best.pt"), "--out", str(out), "--data", str(grocery_subset),
                     "--eval-limit", "4", "--triton-repo", str(tmp_path / "repo")]) == 0
    report = json.loads(capsys.readouterr().out)
    cfg = parse_config(tmp_path / "repo" / "m" / "config.pbtxt")
    assert report["triton"]["name"] == cfg.name == "m" and cfg.max_batch_size == 32
    assert (tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes() == out.read_bytes()


class _V2Handler(BaseHTTPRequestHandler):
    """The parts of the KServe v2 / Triton HTTP protocol that tritonclient.http uses here."""

    protocol_version = "HTTP/1.1"
    models: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, status, payload: bytes, headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _model(self):
        m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/\d+)?/(ready|config|infer)", self.path)
        if not m or m.group(1) not in self.models:
            self._send(404, json.dumps({"error": f"unknown model or path {self.path}"}).encode())
            return None, None
        return self.models[m.group(1)], m.group(2)

    def do_GET(self):
        model, what = self._model()
        if model is not None:
            self._send(200, b"" if what == "ready" else json.dumps(model["config"]).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        model, what = self._model()
        if model is None:
            return
        n_json = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        req, blob = json.loads(body[:n_json]), body[n_json:]
        feed, offset = {}, 0
        for t in req["inputs"]:
            dtype = {"FP32": np.float32, "UINT8": np.uint8}[t["datatype"]]
            if "binary_data_size" in t.get("parameters", {}):
                size = t["parameters"]["binary_data_size"]
                arr, offset = np.frombuffer(blob[offset:offset + size], dtype), offset + size
            else:
                arr = np.asarray(t["data"], dtype)
            feed[t["name"]] = arr.reshape(t["shape"])
        names = [o["name"] for o in req["outputs"]]
        results = model["session"].run(names, feed)
        outs, binary = [], b""
        for name, spec, arr in zip(names, req["outputs"], results):
            o = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
            if spec.get("parameters", {}).get("binary_data"):
                raw = np.ascontiguousarray(arr, np.float32).tobytes()
                o["parameters"] = {"binary_data_size": len(raw)}
                binary += raw
            else:
                o["data"] = arr.ravel().tolist()
            outs.append(o)
        head = json.dumps({"model_name": self.path.split("/")[3], "outputs": outs}).encode()
        self._send(200, head + binary, [("Inference-Header-Content-Length", str(len(head))),
                                        ("Content-Type", "application/octet-stream")])


@pytest.fixture(scope="module")
def v2_server(repo):
    written, _ = repo
    cfg = parse_config(written["config"])
    config = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    bare = json.loads(json.dumps(config))
    bare["parameters"] = {k: v for k, v in bare["parameters"].items() if not k.startswith("skulens.")}
    session = ort.InferenceSession(written["model"], providers=["CPUExecutionProvider"])
    _V2Handler.models = {cfg.name: {"config": config, "session": session},
                         "bare": {"config": bare, "session": session}}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _V2Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", cfg.name
    server.shutdown()
    server.server_close()


def test_triton_client_keeps_the_sdk_api_and_its_results(v2_server, repo, grocery_subset):
    url, name = v2_server
    photos = [line.split(", ")[0] for line in (grocery_subset / "test.txt").read_text().splitlines()[:5]]
    with ImageClassifier.from_path(repo[1], ClassifierOptions(top_k=3)) as local:
        want = local.classify_batch(photos)
        want_logits = local.logits_batch(photos)
    for binary in (True, False):
        with TritonClassifier.from_server(url, name, ClassifierOptions(top_k=3, max_batch=100), binary=binary) as clf:
            assert clf.options.max_batch == 32, "capped at the server's max_batch_size"
            assert clf.labels == local.labels and clf.preprocess_config == local.preprocess_config
            got = clf.classify_batch(photos)
            np.testing.assert_allclose(clf.logits_batch(photos), want_logits, atol=1e-5)
        assert [[c.label for c in r.categories] for r in got] == [[c.label for c in r.categories] for r in want]
        assert got[0].source == photos[0]


def test_triton_client_errors_and_metadata_from_a_local_copy(v2_server, repo, grocery_image):
    url, name = v2_server
    with pytest.raises(ModelError, match="no_such_model: the model is not ready on the server"):
        TritonClassifier.from_server(url, "no_such_model")
    with pytest.raises(ModelError, match="metadata_from"):
        TritonClassifier.from_server(url, "bare")
    with TritonClassifier.from_server(url, "bare", metadata_from=repo[1]) as clf:
        assert clf.classify(grocery_image).top is not None
    with pytest.raises(ModelError, match="cannot reach"):
        TritonClassifier.from_server("127.0.0.1:9", name, timeout_s=2)


def test_missing_triton_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(MissingExtraError, match=r"skulens\[triton\]"):
        TritonClassifier.from_server("127.0.0.1:9", "m")
