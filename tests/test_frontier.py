"""skulens.bench.frontier (``skulens bench-table``): the tiny exported fp32 + INT8 models side by
side on the real Grocery subset, on each backend (OpenVINO where installed), the Pareto marks,
the report files, the CLI and the errors."""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys

import pytest

from skulens.bench import frontier as frontier_module
from skulens.bench._timing import interleaved_samples
from skulens.bench.frontier import (MISSING, _cycle, frontier_table, markdown, pareto_marks,
                                    write_table)
from skulens import ClassifierOptions, ImageClassifier, ModelError, load_dataset
from skulens.cli import main
from skulens._evaluate import evaluate

FAST = dict(rounds=2, iters=3, e2e_images=3)
ONE = dict(rounds=1, iters=1, e2e_images=1, throughput_batch=(), rss=False)  # the cheapest table
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
BACKENDS = ("onnxruntime", "openvino") if HAS_OPENVINO else ("onnxruntime",)
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")


@pytest.fixture(scope="module")
def models(tiny_models):
    return [tiny_models[0], tiny_models[1]]


@pytest.fixture(scope="module")
def table(models, grocery_subset):
    """Both tiny models on every backend installed here, peak RSS included (one child per row)."""
    return frontier_table(models, data=grocery_subset, split="test", backends=BACKENDS, **FAST)


def _row(result, path, backend="onnxruntime"):
    return next(r for r in result["rows"] if r["path"] == str(path) and r["backend"] == backend)


def test_one_row_per_model_and_backend_with_what_the_file_says(table, models):
    assert [(r["path"], r["backend"]) for r in table["rows"]] == [(str(m), b) for m in models for b in BACKENDS]
    assert [r["precision"] for r in table["rows"]] == [p for p in ("fp32", "int8") for _ in BACKENDS]
    assert all(r["threads"] == 1 for r in table["rows"]) and table["skipped"] == []
    for path in models:
        row = _row(table, path)
        with ImageClassifier.from_path(path) as clf:
            assert row["input_size"] == list(clf.preprocess_config.input_size) == [32, 32]
            assert row["model_name"] == clf.metadata.model_name
        assert row["name"] == path.name
        assert row["size_bytes"] == os.path.getsize(path) > 0
        assert row["size_mb"] == pytest.approx(os.path.getsize(path) / 1e6)
    assert table["threads"] == [1] and table["split"] == "test" and table["cpu"]["python"]
    assert table["backends"] == list(BACKENDS)
    json.dumps(table)  # JSON-able


def test_top1_is_the_sdk_evaluation_on_each_backend(table, models, grocery_subset):
    dataset = load_dataset(grocery_subset)
    for path in models:
        for backend in BACKENDS:
            with ImageClassifier.from_path(path, ClassifierOptions(num_threads=1, backend=backend)) as clf:
                ev = evaluate(clf, dataset, split="test")
            row = _row(table, path, backend)
            assert row["top1"] == ev["top1"] and row["coarse_top1"] == ev["coarse_top1"]
            assert row["n"] == ev["n"] == len(dataset.split("test"))
            assert row["accuracy_source"] == "measured"


def test_latencies_p50_p99_throughput_and_rss_are_sane(table):
    for row in table["rows"]:
        for key in ("model_only_p50_ms", "model_only_p99_ms", "e2e_p50_ms", "e2e_p99_ms",
                    "throughput_b8_ips", "throughput_b32_ips", "peak_rss_mb"):
            assert row[key] > 0 and math.isfinite(row[key]), key
        assert row["model_only_p99_ms"] >= row["model_only_p50_ms"] and row["e2e_p99_ms"] >= row["e2e_p50_ms"]
        assert row["timing_samples"] == FAST["rounds"] * FAST["iters"] and row["p99_reliable"] is False
    assert table["e2e_images"] == FAST["e2e_images"] and table["e2e_inputs"].startswith("real")
    assert table["throughput_batch"] == [8, 32]
    assert table["rss"]["measured"] and table["rss"]["baseline_mb"] > 0 and "fresh process" in table["rss"]["how"]


def test_timing_interleaves_the_models_round_by_round():
    calls = []
    fns = [lambda k=k: calls.append(k) for k in "ABC"]
    samples = interleaved_samples(fns, rounds=2, iters=2, warmup=1)
    assert calls == list("ABC") + list("AABBCC") * 2
    assert [len(s) for s in samples] == [4, 4, 4] and all(t >= 0 for s in samples for t in s)


def test_end_to_end_cycles_the_jpeg_bytes():
    class Recorder:
        def __init__(self):
            self.seen = []

        def classify(self, image):
            self.seen.append(image)

    rec = Recorder()
    run = _cycle(rec, [b"a", b"b", b"c"])
    for _ in range(7):
        run()
    assert rec.seen == [b"a", b"b", b"c", b"a", b"b", b"c", b"a"]


def test_metadata_eval_is_reused_only_when_asked_and_valid(models, grocery_subset):
    with ImageClassifier.from_path(models[1]) as clf:
        stored = clf.metadata.metrics["eval"]
    reused = frontier_table([models[1]], data=grocery_subset, reuse_metadata_eval=True, **ONE)["rows"][0]
    assert reused["accuracy_source"] == "from metadata" and reused["top1"] == stored["top1"]
    limited = frontier_table([models[1]], data=grocery_subset, limit=5, reuse_metadata_eval=True, **ONE)["rows"][0]
    assert limited["accuracy_source"] == "measured" and limited["n"] == 5
    other = frontier_table([models[1]], data=grocery_subset, split="val", reuse_metadata_eval=True, **ONE)["rows"][0]
    assert other["accuracy_source"] == "measured"


def test_markdown_has_one_row_per_model_and_backend(table, models):
    md = markdown(table)
    assert "| model | backend | threads | input | precision | top-1 fine | top-1 coarse | model-only p50 / p99 ms " \
           "| end-to-end p50 / p99 ms | img/s b8 | img/s b32 | peak RSS MB | size MB | vs onnxruntime | Pareto |" in md
    body = [line for line in md.splitlines() if line.startswith("| tiny")]
    assert len(body) == len(models) * len(BACKENDS) == len(table["rows"])
    assert "| fp32 |" in body[0] and "| int8 |" in body[-1] and "32x32" in body[0]
    assert f"{100 * table['rows'][0]['top1']:.1f} %" in body[0] and "| onnxruntime | 1 |" in body[0]
    for line, row in zip(body, table["rows"]):  # a star exactly on the Pareto-optimal rows
        assert line.endswith("| ★ |") == bool(row["pareto"])
    assert "Skipped" not in md and "importing skulens alone" in md


def test_write_table_writes_the_three_files(table, tmp_path):
    written = write_table(table, tmp_path / "out")
    assert {p.name for p in written} == {"frontier.json", "frontier.md", "frontier.png"}
    assert json.loads((tmp_path / "out" / "frontier.json").read_text()) == json.loads(json.dumps(table))
    assert (tmp_path / "out" / "frontier.md").read_text() == markdown(table)
    assert (tmp_path / "out" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_data_no_accuracy_and_synthetic_jpegs(models, tmp_path):
    result = frontier_table(models, rounds=1, iters=2, e2e_images=2, throughput_batch=(8,), rss=False)
    assert all(r["top1"] is None and r["coarse_top1"] is None and r["pareto"] is None for r in result["rows"])
    assert all(r["e2e_p50_ms"] > 0 and "peak_rss_mb" not in r for r in result["rows"])
    assert "synthetic" in result["e2e_inputs"] and not result["rss"]["measured"]
    md = markdown(result)
    body = [line for line in md.splitlines() if line.startswith("| tiny")]
    assert len(body) == 2 and all(f"| {MISSING} | {MISSING} |" in line for line in body)
    assert "no Pareto marks" in md and "Peak RSS: not measured" in md and "★ |" not in md
    assert len(write_table(result, tmp_path)) == 3


def test_cli_prints_json_and_writes_files(models, grocery_subset, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["-q", "bench-table", *map(str, models), "--data", str(grocery_subset), "--split", "test",
               "--limit", "6", "--rounds", "1", "--e2e-images", "2", "--throughput-batch", "8", "--no-rss",
               "--threads", "1", "--backends", "onnxruntime", "--out", str(out), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["precision"] for r in result["rows"]] == ["fp32", "int8"] and result["rows"][0]["n"] == 6
    assert result["throughput_batch"] == [8] and "throughput_b32_ips" not in result["rows"][0]
    assert sorted(p.name for p in out.iterdir()) == ["frontier.json", "frontier.md", "frontier.png"]


def test_cli_prints_markdown(models, tmp_path, capsys):
    assert main(["-q", "bench-table", str(models[1]), "--rounds", "1", "--e2e-images", "1", "--no-rss",
                 "--throughput-batch", "", "--out", str(tmp_path)]) == 0
    assert "| model | backend | threads | input |" in capsys.readouterr().out


def test_no_models_is_an_error():
    with pytest.raises(ValueError, match="at least one model"):
        frontier_table([])


def test_bad_threads_batches_and_backends_are_errors(models, tmp_path, capsys):
    with pytest.raises(ValueError, match="threads must be integers >= 1"):
        frontier_table([models[1]], threads="1,0", **ONE)
    with pytest.raises(ValueError, match="throughput_batch must be"):
        frontier_table([models[1]], throughput_batch=(-8,), **{k: v for k, v in ONE.items() if k != "throughput_batch"})
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        frontier_table([models[1]], backends="onnxruntime,tensorrt", **ONE)
    assert main(["-q", "bench-table", str(models[1]), "--threads", "x", "--out", str(tmp_path / "o")]) == 2
    assert "expected comma-separated integers" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_missing_file_is_named(models, tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match="nope.onnx: no such model file"):
        frontier_table([models[0], missing], **ONE)
    assert main(["-q", "bench-table", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "nope.onnx" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_plain_onnx_without_skulens_metadata_is_named(models, tmp_path):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(models[0]))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(ModelError, match=r"plain\.onnx: no skulens metadata"):
        frontier_table([plain], **ONE)


def test_every_cli_flag_has_help_and_reaches_the_api():
    import inspect

    from skulens.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    actions = [a for a in sub.choices["bench-table"]._actions if a.dest != "help"]
    assert all(a.help for a in actions)
    api = set(inspect.signature(frontier_table).parameters)
    assert {a.dest for a in actions} - {"out", "json"} == api - {"iters"}


# -- Pareto marks ---------------------------------------------------------------------------------
def _hand(top1, e2e, threads=1):
    return {"top1": top1, "e2e_p50_ms": e2e, "threads": threads}


def test_pareto_marks_on_hand_made_rows():
    rows = [_hand(0.80, 10.0),   # 0 the most accurate                           -> optimal
            _hand(0.70, 5.0),    # 1                                              -> optimal
            _hand(0.70, 6.0),    # 2 as accurate as 1 but slower                  -> dominated by 1
            _hand(0.80, 10.0),   # 3 the same as 0: neither is strictly better    -> optimal
            _hand(0.60, 12.0),   # 4 less accurate and slower than 0 and 1        -> dominated
            _hand(0.50, 1.0),    # 5 the fastest                                  -> optimal
            _hand(0.75, 5.0),    # 6 as fast as 1 and more accurate: dominates 1  -> optimal
            _hand(0.40, 20.0, threads=2),  # 7 dominated by all of threads 1, alone at 2 threads -> optimal
            _hand(None, 0.5)]    # 8 no accuracy                                  -> no mark
    assert pareto_marks(rows) == [True, False, False, True, False, True, True, True, None]
    assert pareto_marks([_hand(0.5, 2.0), _hand(0.5, 2.0)]) == [True, True]
    assert pareto_marks([_hand(0.5, 2.0), _hand(0.6, 2.0)]) == [False, True]  # same speed, more accurate
    assert pareto_marks([]) == []


def test_table_marks_the_pareto_rows_per_thread_count(table):
    assert [r["pareto"] for r in table["rows"]] == pareto_marks(table["rows"])
    assert any(r["pareto"] for r in table["rows"])
    best = max(table["rows"], key=lambda r: (r["top1"], -r["e2e_p50_ms"]))
    assert best["pareto"] is True  # the most accurate row (fastest among ties) is never dominated


# -- backends -------------------------------------------------------------------------------------
@needs_openvino
def test_openvino_rows_agree_with_onnxruntime_on_the_same_file(table, models):
    for path in models:
        ov, ort_row = _row(table, path, "openvino"), _row(table, path, "onnxruntime")
        check = ov["vs_onnxruntime"]
        assert ort_row["vs_onnxruntime"] is None and ov["precision"] == ort_row["precision"]
        assert check["on"] == "evaluated images" and check["images"] == ov["n"]
        assert check["ok"] and check["max_abs_logit_diff"] <= check["tolerance"]
        assert check["top1_agreement"] >= (1.0 if ov["precision"] == "fp32" else 0.9)
    assert "| openvino | 1 |" in markdown(table) and "✓" in markdown(table)


@needs_openvino
def test_openvino_rows_never_reuse_the_stored_eval(models, grocery_subset):
    result = frontier_table([models[1]], data=grocery_subset, backends="onnxruntime,openvino",
                            reuse_metadata_eval=True, **ONE)
    ort_row, ov = result["rows"]
    assert ort_row["accuracy_source"] == "from metadata" and ov["accuracy_source"] == "measured"
    assert ov["vs_onnxruntime"]["on"] == "timing JPEGs" and ov["vs_onnxruntime"]["ok"]


def test_a_missing_backend_is_skipped_with_the_reason(models, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ModuleNotFoundError
    with caplog.at_level(logging.WARNING, logger="skulens.bench.frontier"):
        result = frontier_table([models[1]], backends="onnxruntime,openvino", **ONE)
    assert [r["backend"] for r in result["rows"]] == ["onnxruntime"] and result["backends"] == ["onnxruntime", "openvino"]
    (skip,) = result["skipped"]
    assert skip["backend"] == "openvino" and skip["model"] is None and "skulens[openvino]" in skip["reason"]
    assert "backend openvino skipped" in caplog.text
    assert "**Skipped**: backend openvino for all models: " in markdown(result)
    with pytest.raises(ValueError, match="no asked backend can run here: openvino: .*skulens\\[openvino\\]"):
        frontier_table([models[1]], backends="openvino", **ONE)


def test_a_model_a_backend_cannot_open_is_skipped_with_the_reason(models, monkeypatch):
    class NoOpenVino(ImageClassifier):
        @classmethod
        def from_path(cls, path, options=None):
            if options is not None and options.backend == "openvino":
                raise ModelError(f"{path}: OpenVINO cannot compile this model (test)")
            return ImageClassifier.from_path(path, options)

    monkeypatch.setattr(frontier_module, "backend_unavailable", lambda backend: None)
    monkeypatch.setattr(frontier_module, "ImageClassifier", NoOpenVino)
    result = frontier_table([models[1]], backends="onnxruntime,openvino", **ONE)
    assert [r["backend"] for r in result["rows"]] == ["onnxruntime"]
    assert result["skipped"] == [{"backend": "openvino", "model": models[1].name,
                                  "reason": f"{models[1]}: OpenVINO cannot compile this model (test)"}]
    assert f"**Skipped**: backend openvino for {models[1].name}: " in markdown(result)


# -- thread counts --------------------------------------------------------------------------------
def test_each_thread_count_has_its_rows_timed_in_one_interleaved_loop(models, grocery_subset, monkeypatch):
    loops = []

    def recording(fns, **kw):
        loops.append(len(fns))
        return interleaved_samples(fns, **kw)

    monkeypatch.setattr(frontier_module, "interleaved_samples", recording)
    result = frontier_table(models, data=grocery_subset, limit=4, threads="1,2", rounds=1, iters=2,
                            e2e_images=1, throughput_batch=(8,), rss=False)
    assert [(r["threads"], r["path"]) for r in result["rows"]] == [(t, str(m)) for t in (1, 2) for m in models]
    assert loops == [2, 2, 2] * 2  # per thread count: model-only, end to end, batch 8; all rows in each
    one, two = result["rows"][:2], result["rows"][2:]
    assert [r["top1"] for r in one] == [r["top1"] for r in two]  # measured once per model x backend
    assert all(r["pareto"] in (True, False) for r in result["rows"]) and any(r["pareto"] for r in two)
    assert all(r["throughput_b8_ips"] > 0 for r in result["rows"])
