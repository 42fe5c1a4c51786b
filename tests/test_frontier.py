"""skulens.bench.frontier (``skulens bench-table``): the tiny exported fp32 + INT8 models side by
side on the real Grocery subset, the report files, the CLI and the errors."""
from __future__ import annotations

import json
import math
import os

import pytest

from skulens.bench._timing import interleaved_samples
from skulens.bench.frontier import (MISSING, _cycle, frontier_table, markdown,
                                    write_table)
from skulens import ClassifierOptions, ImageClassifier, ModelError, load_dataset
from skulens.cli import main
from skulens._evaluate import evaluate

FAST = dict(rounds=2, iters=3, e2e_images=3)


@pytest.fixture(scope="module")
def models(tiny_models):
    return [tiny_models[0], tiny_models[1]]


@pytest.fixture(scope="module")
def table(models, grocery_subset):
    return frontier_table(models, data=grocery_subset, split="test", **FAST)


def _row(result, path):
    return next(r for r in result["rows"] if r["path"] == str(path))


def test_one_row_per_model_with_what_the_file_says(table, models):
    assert [r["path"] for r in table["rows"]] == [str(m) for m in models]
    assert [r["precision"] for r in table["rows"]] == ["fp32", "int8"]
    for path in models:
        row = _row(table, path)
        with ImageClassifier.from_path(path) as clf:
            assert row["input_size"] == list(clf.preprocess_config.input_size) == [32, 32]
            assert row["model_name"] == clf.metadata.model_name
        assert row["name"] == path.name
        assert row["size_bytes"] == os.path.getsize(path) > 0
        assert row["size_mb"] == pytest.approx(os.path.getsize(path) / 1e6)
    assert table["threads"] == 1 and table["split"] == "test" and table["cpu"]["python"]
    json.dumps(table)  # JSON-able


def test_top1_is_the_sdk_evaluation(table, models, grocery_subset):
    dataset = load_dataset(grocery_subset)
    for path in models:
        with ImageClassifier.from_path(path, ClassifierOptions(num_threads=1)) as clf:
            ev = evaluate(clf, dataset, split="test")
        row = _row(table, path)
        assert row["top1"] == ev["top1"] and row["coarse_top1"] == ev["coarse_top1"]
        assert row["n"] == ev["n"] == len(dataset.split("test"))
        assert row["accuracy_source"] == "measured"


def test_latencies_are_positive_and_finite(table):
    for row in table["rows"]:
        for key in ("model_only_p50_ms", "model_only_p90_ms", "e2e_p50_ms", "e2e_p90_ms"):
            assert row[key] > 0 and math.isfinite(row[key]), key
        assert row["timing_samples"] == FAST["rounds"] * FAST["iters"]
    assert table["e2e_images"] == FAST["e2e_images"] and table["e2e_inputs"].startswith("real")


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
    one = dict(rounds=1, iters=1, e2e_images=1)
    with ImageClassifier.from_path(models[1]) as clf:
        stored = clf.metadata.metrics["eval"]
    reused = frontier_table([models[1]], data=grocery_subset, reuse_metadata_eval=True, **one)["rows"][0]
    assert reused["accuracy_source"] == "from metadata" and reused["top1"] == stored["top1"]
    limited = frontier_table([models[1]], data=grocery_subset, limit=5, reuse_metadata_eval=True, **one)["rows"][0]
    assert limited["accuracy_source"] == "measured" and limited["n"] == 5
    other = frontier_table([models[1]], data=grocery_subset, split="val", reuse_metadata_eval=True, **one)["rows"][0]
    assert other["accuracy_source"] == "measured"


def test_markdown_has_one_row_per_model(table, models):
    md = markdown(table)
    assert "| model | input | precision | top-1 fine | top-1 coarse | model-only p50 ms " \
           "| end-to-end p50 ms | size MB |" in md
    body = [line for line in md.splitlines() if line.startswith("| tiny")]
    assert len(body) == len(models)
    assert "| fp32 |" in body[0] and "| int8 |" in body[1] and "32x32" in body[0]
    assert f"{100 * table['rows'][0]['top1']:.1f} %" in body[0]


def test_write_table_writes_the_three_files(table, tmp_path):
    written = write_table(table, tmp_path / "out")
    assert {p.name for p in written} == {"frontier.json", "frontier.md", "frontier.png"}
    assert json.loads((tmp_path / "out" / "frontier.json").read_text()) == json.loads(json.dumps(table))
    assert (tmp_path / "out" / "frontier.md").read_text() == markdown(table)
    assert (tmp_path / "out" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_data_no_accuracy_and_synthetic_jpegs(models, tmp_path):
    result = frontier_table(models, rounds=1, iters=2, e2e_images=2)
    assert all(r["top1"] is None and r["coarse_top1"] is None for r in result["rows"])
    assert all(r["e2e_p50_ms"] > 0 for r in result["rows"]) and "synthetic" in result["e2e_inputs"]
    body = [line for line in markdown(result).splitlines() if line.startswith("| tiny")]
    assert len(body) == 2 and all(f"| {MISSING} | {MISSING} |" in line for line in body)
    assert len(write_table(result, tmp_path)) == 3


def test_cli_prints_json_and_writes_files(models, grocery_subset, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["-q", "bench-table", *map(str, models), "--data", str(grocery_subset), "--split", "test",
               "--limit", "6", "--rounds", "1", "--e2e-images", "2", "--out", str(out), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["precision"] for r in result["rows"]] == ["fp32", "int8"] and result["rows"][0]["n"] == 6
    assert sorted(p.name for p in out.iterdir()) == ["frontier.json", "frontier.md", "frontier.png"]


def test_cli_prints_markdown(models, tmp_path, capsys):
    assert main(["-q", "bench-table", str(models[1]), "--rounds", "1", "--e2e-images", "1",
                 "--out", str(tmp_path)]) == 0
    assert "| model | input |" in capsys.readouterr().out


def test_no_models_is_an_error():
    with pytest.raises(ValueError, match="at least one model"):
        frontier_table([])


def test_missing_file_is_named(models, tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match="nope.onnx: no such model file"):
        frontier_table([models[0], missing], rounds=1, iters=1, e2e_images=1)
    assert main(["-q", "bench-table", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "nope.onnx" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_plain_onnx_without_skulens_metadata_is_named(models, tmp_path):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(models[0]))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(ModelError, match=r"plain\.onnx: no skulens metadata"):
        frontier_table([plain], rounds=1, iters=1, e2e_images=1)


def test_every_cli_flag_has_help_and_reaches_the_api():
    import inspect

    from skulens.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    actions = [a for a in sub.choices["bench-table"]._actions if a.dest != "help"]
    assert all(a.help for a in actions)
    api = set(inspect.signature(frontier_table).parameters)
    assert {a.dest for a in actions} - {"out", "json"} == api - {"iters"}
