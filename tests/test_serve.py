"""The HTTP service, run for real (`python -m skulens.cli serve`) on a free loopback port."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor, wait

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from skulens import ClassifierOptions, ImageClassifier  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOKEN = "s3cret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model, *flags, env=None, log_level="-q"):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skulens.cli", log_level, "serve", str(model), "--port", str(port),
                             "--num-threads", "1", *map(str, flags)], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read().decode()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models[0]


@pytest.fixture(scope="module")
def photo(grocery_subset):
    return (grocery_subset / "test.txt").read_text().splitlines()[0].split(", ")[0]


@pytest.fixture(scope="module")
def guarded(model):
    """Token on (from the environment), micro-batching off, small limits."""
    with running_server(model, "--max-batch", 1, "--max-pixels", 500_000, "--max-body-bytes", 100_000,
                        env={"SKULENS_API_TOKEN": TOKEN}) as (url, _):
        yield url


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_classify_raw_and_multipart_match_the_sdk(guarded, model, photo):
    data = Path(photo).read_bytes()
    with ImageClassifier.from_path(model, ClassifierOptions(top_k=2)) as clf:
        want = clf.classify(photo)
        labels = list(clf.labels)
    raw = httpx.post(guarded + "/v1/classify?top_k=2", content=data,
                     headers={**AUTH, "Content-Type": "image/jpeg"})
    multi = httpx.post(guarded + "/v1/classify?top_k=2", files={"image": ("p.jpg", data, "image/jpeg")},
                       headers=AUTH)
    for r in (raw, multi):
        assert r.status_code == 200, r.text
        body = r.json()
        assert [c["label"] for c in body["categories"]] == [c.label for c in want.categories]
        assert [c["score"] for c in body["categories"]] == pytest.approx([c.score for c in want.categories], abs=1e-5)
        assert body["batch_size"] == 1, "max_batch 1 turns micro-batching off"
        assert body["coarse"]["label"] == want.coarse.label            # the top product's group
    info = httpx.get(guarded + "/v1/model", headers=AUTH).json()
    assert info["labels"] == labels and info["preprocess"]["input_size"] == [32, 32]
    assert info["versions"]["skulens"] and info["batching"]["max_batch"] == 1
    spec = httpx.get(guarded + "/openapi.json").json()
    assert {"/v1/classify", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]


def test_api_docs_work_offline(guarded):
    """/docs is a self-contained page from the OpenAPI schema: no script or stylesheet from a
    CDN (FastAPI's default Swagger UI is blank on an offline kiosk)."""
    r = httpx.get(guarded + "/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    if os.environ.get("SKULENS_DOCS_DUMP"):
        Path(os.environ["SKULENS_DOCS_DUMP"]).write_text(page)
    assert "<script" not in page.lower() and not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    for op in ("/v1/classify", "/v1/model", "/healthz", "/readyz", "ClassifyOut", "top_k", "image/jpeg",
               "Authorization: Bearer TOKEN", "openapi.json"):
        assert op in page, op
    assert httpx.get(guarded + "/redoc").status_code == 404  # the other CDN page is off too
    assert "/docs" not in httpx.get(guarded + "/openapi.json").json()["paths"]


def test_bearer_token_required_on_v1_only(guarded, photo):
    data = Path(photo).read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(guarded + "/v1/classify", content=data, headers={**headers, "Content-Type": "image/jpeg"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(guarded + "/v1/model").status_code == 401
    assert httpx.get(guarded + "/healthz").json() == {"status": "ok"}


def test_errors_are_json_with_stable_codes(guarded, photo, tmp_path):
    data = Path(photo).read_bytes()
    big = cv2.imencode(".png", np.zeros((1000, 1000), np.uint8))[1].tobytes()  # 1 MP > 500k limit
    assert len(big) < 100_000
    cases = [
        (b"definitely not an image", "image/jpeg", "", 400, "bad_image"),
        (data[: len(data) // 2], "image/jpeg", "", 400, "bad_image"),       # truncated JPEG
        (b"", "image/jpeg", "", 400, "bad_image"),
        (data, "text/plain", "", 415, "unsupported_media_type"),
        (data + b"\0" * 100_000, "application/octet-stream", "", 413, "payload_too_large"),
        (big, "image/png", "", 413, "image_too_large"),
        (data, "image/jpeg", "?top_k=0", 400, "bad_request"),
        (data, "image/jpeg", "?top_k=many", 400, "bad_request"),
    ]
    for body, ctype, query, status, code in cases:
        r = httpx.post(guarded + "/v1/classify" + query, content=body, headers={**AUTH, "Content-Type": ctype})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (ctype, query, r.text)
        assert r.json()["error"]["message"]
    chunked = httpx.post(guarded + "/v1/classify", content=iter([data, b"\0" * 100_000]),
                         headers={**AUTH, "Content-Type": "image/jpeg"})  # no Content-Length
    assert "content-length" not in chunked.request.headers
    assert (chunked.status_code, chunked.json()["error"]["code"]) == (413, "payload_too_large")
    r = httpx.post(guarded + "/v1/classify", files={"other": ("p.jpg", data)}, headers=AUTH)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request")
    r = httpx.get(guarded + "/v2/nothing")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


class StalledUpload:
    """A client that sends the headers and half the image, then stalls: its request is in flight
    (announced to the batcher, still reading its body) until ``finish()`` sends the rest."""

    def __init__(self, url: str, data: bytes):
        port = int(url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.rest = data[len(data) // 2:]
        head = (f"POST /v1/classify?top_k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        self.sock.sendall(head + data[:len(data) // 2])

    def finish(self):
        self.sock.sendall(self.rest)
        return self.response()

    def response(self):
        r = http.client.HTTPResponse(self.sock)
        r.begin()
        body = json.loads(r.read())
        self.sock.close()
        return r.status, body


def post_image(url, data, **kw):
    return httpx.post(url + "/v1/classify?top_k=1", content=data, headers={"Content-Type": "image/jpeg"},
                      timeout=30, **kw)


def test_full_queue_gets_503_and_a_stalled_upload_504(model, photo):
    data = Path(photo).read_bytes()
    with running_server(model, "--max-batch", 64, "--max-delay-ms", 8000, "--max-queue", 2,
                        "--request-timeout-s", 5) as (url, _):
        slow = StalledUpload(url, data)  # keeps the forming batch waiting for it
        time.sleep(1.0)
        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(post_image, url, data) for _ in range(5)]
            done, waiting = wait(futures, timeout=2.5)  # generous on a busy machine, < the 5 s timeout
            rejected = [f.result() for f in done]
            assert sorted((r.status_code, r.json()["error"]["code"]) for r in rejected) == [(503, "overloaded")] * 3
            assert all(r.headers["retry-after"] == "1" for r in rejected) and len(waiting) == 2
            status, body = slow.response()  # the stalled upload gives up at 5 s ...
            assert (status, body["error"]["code"]) == (504, "timeout")
            accepted = [f.result() for f in waiting]
        assert [r.status_code for r in accepted] == [200, 200]  # ... then the batch of 2 runs
        assert [r.json()["batch_size"] for r in accepted] == [2, 2]


def test_micro_batching_and_graceful_shutdown(model, photo):
    data = Path(photo).read_bytes()
    frames = [cv2.imencode(".jpg", cv2.flip(cv2.imread(photo), k))[1].tobytes() for k in (-1, 0, 1)] + [data]
    with ImageClassifier.from_path(model, ClassifierOptions(top_k=1)) as clf:
        want = [clf.classify(f).top for f in frames]
    with running_server(model, "--max-batch", 16, "--max-delay-ms", 10000, log_level="-v") as (url, proc):
        # A lone request is not kept waiting for company.
        assert post_image(url, data).json()["batch_size"] == 1
        slow = StalledUpload(url, data)
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post_image, url, frames[i % 4]) for i in range(8)]
            time.sleep(1.0)
            assert not any(f.done() for f in futures), "the batch waits for the announced upload"
            assert slow.finish()[0] == 200
            responses = [f.result() for f in futures]
        assert [r.json()["batch_size"] for r in responses] == [9] * 8, "one batch of 9"
        for i, r in enumerate(responses):  # batching does not change any answer
            top = r.json()["categories"][0]
            assert top["label"] == want[i % 4].label and top["score"] == pytest.approx(want[i % 4].score, abs=1e-5)

        # SIGTERM while 4 requests wait for a slow upload: all 5 still get their answers.
        slow = StalledUpload(url, data)
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(post_image, url, frames[i]) for i in range(4)]
            time.sleep(1.5)  # all 4 connected (they wait for the stalled upload's batch)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert slow.finish()[0] == 200
            done = [f.result() for f in pending]
        assert [r.status_code for r in done] == [200] * 4
        assert proc.wait(20) == -signal.SIGTERM  # uvicorn re-raises the signal after shutting down
        log = proc.stdout.read().decode()
        assert re.search(r"Waiting for connections to close.*stopped after 3 batches, 15 images", log, re.S), log
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/healthz", timeout=2)


def test_sdk_core_stays_free_of_the_web_stack_and_names_the_extra(monkeypatch):
    code = ("import sys, skulens; from skulens.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import skulens.serve
    from skulens import MissingExtraError

    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "skulens.serve._app", raising=False)
    with pytest.raises(MissingExtraError, match=r"skulens\[serve\]"):
        getattr(skulens.serve, "create_app")


def test_load_test_runs_bounded_on_loopback_and_reports_both_servers(model, photo, tmp_path):
    from skulens.bench.load_test import main as load_main, run_load_test

    with pytest.raises(ValueError, match="bounded"):
        run_load_test(model, photo, duration=600)
    out = tmp_path / "load.json"
    assert load_main([str(model), "--image", photo, "--concurrency", "1", "6", "--duration", "0.4",
                      "--rounds", "1", "--max-delay-ms", "20", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["host"] == "127.0.0.1" and set(report["concurrency"]) == {"1", "6"}
    for row in report["concurrency"].values():
        for name in ("batched", "unbatched"):
            assert row[name]["requests"] > 0 and row[name]["errors"] == {}
            assert row[name]["p50_ms"] <= row[name]["p99_ms"]
        assert row["unbatched"]["mean_batch_size"] == 1.0
        assert row["throughput_gain"] == pytest.approx(
            row["batched"]["throughput_rps"] / row["unbatched"]["throughput_rps"], rel=1e-2)
    assert report["concurrency"]["1"]["batched"]["mean_batch_size"] == 1.0
