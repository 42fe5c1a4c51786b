"""Export as one job: ExportConfig in, a complete set of files out (or nothing), the INT8 gate,
and every job's config round-tripping through plain dicts."""
from __future__ import annotations

import dataclasses
import json

import pytest

from skulens import ImageClassifier
from skulens.internal import config_from_dict, config_to_dict


def _config(tiny_run, grocery_subset, out, **kw):
    from skulens.export import ExportConfig

    return ExportConfig(checkpoint=str(tiny_run[0] / "best.pt"), out=str(out), data=str(grocery_subset),
                        calibration_size=16, activation_type="u8", **kw)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_report_is_the_manifest_of_the_set(tiny_models):
    fp32, int8, report = tiny_models
    saved = json.loads(fp32.with_name("tiny.report.json").read_text())
    from skulens.internal import sha256_file

    assert saved["fp32"]["sha256"] == sha256_file(fp32) and saved["int8"]["sha256"] == sha256_file(int8)
    assert saved["int8"]["shipped"] is True and saved["int8"]["gate"]["passed"] is True
    assert saved["int8"]["gate"]["n"] == report["fp32"]["eval"]["n"]
    assert not [p for p in fp32.parent.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_failed_export_leaves_the_previous_set_untouched(tiny_run, grocery_subset, tmp_path, monkeypatch):
    from skulens.export import export
    from skulens.export import _pipeline

    export(_config(tiny_run, grocery_subset, tmp_path / "m.onnx", int8=True))
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    assert set(before) == {"m.onnx", "m.int8.onnx", "m.report.json"}

    def boom(*args, **kwargs):
        raise RuntimeError("killed while quantizing")

    monkeypatch.setattr(_pipeline, "quantize_int8", boom)
    with pytest.raises(RuntimeError, match="killed while quantizing"):
        export(_config(tiny_run, grocery_subset, tmp_path / "m.onnx", int8=True, embedding=False))
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before  # nothing half-new


def test_reexport_without_int8_removes_the_stale_int8(tiny_run, grocery_subset, tmp_path):
    from skulens.export import export

    export(_config(tiny_run, grocery_subset, tmp_path / "m.onnx", int8=True))
    report = export(_config(tiny_run, grocery_subset, tmp_path / "m.onnx"))
    assert _files(tmp_path) == ["m.onnx", "m.report.json"]
    assert "int8" not in json.loads((tmp_path / "m.report.json").read_text())
    assert report["report_path"] == str(tmp_path / "m.report.json")


def test_int8_gate_rejects_a_model_that_loses_accuracy(tiny_run, grocery_subset, tmp_path):
    """A gate that allows no drop at all (-100 pp) must reject; the rejected model is kept for
    inspection under its own name and no file looks like a shipped INT8 model."""
    from skulens.export import export

    (tmp_path / "m.int8.onnx").write_bytes(b"an older INT8 model")
    report = export(_config(tiny_run, grocery_subset, tmp_path / "m.onnx", int8=True, int8_max_drop_pp=-100.0))
    gate = report["int8"]["gate"]
    assert gate["passed"] is False and "exceeds" in gate["reason"]
    assert report["int8"]["shipped"] is False and report["int8"]["path"].endswith("m.int8.rejected.onnx")
    assert _files(tmp_path) == ["m.int8.rejected.onnx", "m.onnx", "m.report.json"]
    with ImageClassifier.from_path(tmp_path / "m.int8.rejected.onnx") as clf:  # still inspectable
        assert clf.metadata.quantization["activations"] == "u8"


def test_export_of_a_generator_through_the_same_job(tiny_gan, tmp_path):
    from skulens.export import ExportConfig, export

    report = export(ExportConfig(checkpoint=str(tiny_gan[0] / "last.pt"), out=str(tmp_path / "g.onnx")))
    assert report["kind"] == "generator" and _files(tmp_path) == ["g.onnx", "g.report.json"]


def _job_configs():
    from skulens.bench.config import BenchConfig
    from skulens.export import ExportConfig
    from skulens.serve import ServeConfig
    from skulens.training import TrainConfig
    from skulens.training.gan.config import GanConfig, GanEvalConfig

    return [TrainConfig(data="d", epochs=3, model_kwargs={"widths": [8, 16]}), ExportConfig(checkpoint="c.pt", int8=True),
            BenchConfig(model="m.onnx"), ServeConfig(model="m.onnx"), GanConfig(data="d"),
            GanEvalConfig(generator="g.onnx", data="d", classifier="c.pt")]


@pytest.mark.parametrize("index", range(6))
def test_every_job_config_round_trips_through_plain_json(index):
    cfg = _job_configs()[index]
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(type(cfg), data) == cfg
    with pytest.raises(ValueError, match="no field"):
        config_from_dict(type(cfg), {**data, "not_a_field": 1})
    assert config_from_dict(type(cfg), {**data, "not_a_field": 1}, strict=False) == cfg
    assert all(f.name in data for f in dataclasses.fields(cfg))


@pytest.mark.slow
def test_sigkilled_exports_leave_a_consistent_set(tiny_run, grocery_subset, tmp_path):
    """Real SIGKILLs at drawn moments of real exports: never a report that lies about its files
    or an INT8 file outside the reported set, and the next export removes the killed ones'
    staging folders."""
    from skulens.bench.kill_test import kill_test

    summary = kill_test(str(tiny_run[0] / "best.pt"), str(grocery_subset), tmp_path / "k", kills=3, seed=1)
    assert summary["killed"] >= 1
    assert summary["inconsistent"] == [] and summary["final_state"] == "complete"
    assert summary["leftover_staging"] == []
