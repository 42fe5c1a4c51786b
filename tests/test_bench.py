"""runtime_bench on the tiny model: result structure and schema, peer checks, statistics,
baseline comparison (a forced regression must be caught). No timing thresholds."""
from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from skulens.bench import SCHEMA_VERSION, BenchConfig, compare_with_baseline, run_benchmark
from skulens.bench._report import markdown, write_outputs
from skulens.bench._timing import paired_speedup, summarize
from skulens.bench.config import OPENVINO_PEERS, PEERS, SDK_BACKEND, parse_int_list, parse_peers
from skulens import SkulensError

HAVE = {"openvino": importlib.util.find_spec("openvino") is not None, "nncf": importlib.util.find_spec("nncf") is not None}
EXTRA = {"openvino_fp32": "openvino", "openvino_int8": "openvino", "openvino_nncf": "nncf"}


def _runs_here(peer: str) -> bool:
    """Every peer runs here, except the OpenVINO ones when their extra is not installed."""
    return peer not in EXTRA or (HAVE["openvino"] and HAVE[EXTRA[peer]])

TOP_LEVEL = {"schema_version", "tool", "skulens_version", "created_utc", "environment", "cpu", "subject",
             "model", "settings", "peers", "macs_per_image", "gemm_ceiling", "startup", "configs", "pairs",
             "verdict", "diagnostics", "notes", "charts", "machine_load"}


@pytest.fixture(scope="module")
def bench(tiny_models, tiny_run, grocery_subset, tmp_path_factory):
    """One small run: the tiny INT8 model under test, every peer, batch 1 and 3, 1 thread."""
    _, int8, _ = tiny_models
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(model=str(int8), data=str(grocery_subset), checkpoint=str(tiny_run[0] / "best.pt"),
                      threads=(1,), batch=(1, 3), rounds=2, round_time=0.02, warmup_time=0.01,
                      eval_limit=8, cold_start_repeats=1, out=str(out))
    return run_benchmark(cfg), out


def test_result_has_the_stable_schema_and_files(bench):
    result, out = bench
    assert result["schema_version"] == SCHEMA_VERSION
    assert TOP_LEVEL <= set(result)
    saved = json.loads((out / "bench.json").read_text())
    assert saved["schema_version"] == SCHEMA_VERSION and set(saved) == set(result)
    assert [c["id"] for c in saved["configs"]] == [c["id"] for c in result["configs"]]
    md = (out / "bench.md").read_text()
    assert "| peer | format | precision |" in md and "## End-to-end" in md and "## Roofline" in md
    assert set(result["charts"]) == {"latency.png", "accuracy_vs_latency.png"}
    for name in result["charts"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["subject"] == "ort_int8_u8s8"
    assert result["settings"]["inputs"] == "real images" and result["settings"]["eval_n"] == 8


def test_every_configuration_is_measured_with_consistent_statistics(bench):
    result, _ = bench
    ids = {c["id"] for c in result["configs"]}
    for peer in PEERS:
        for b in (1, 3):
            assert f"{peer}/model/t1/b{b}" in ids
    for peer in SDK_BACKEND:  # the peers that run one of our ONNX files through the SDK
        assert f"{peer}/e2e/t1/b1" in ids
    for c in result["configs"]:
        if not _runs_here(c["peer"]):
            assert c["status"] == "skipped", c
            continue
        assert c["status"] == "ok", c
        lat = c["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["n"] >= 2 and len(c["round_p50_ms"]) == 2
        assert c["throughput_ips"] == pytest.approx(1e3 * c["batch"] / lat["mean"], rel=1e-6)
        assert c["create_s"] > 0 and c["peak_rss_mb"] >= c["rss_after_create_mb"] > 0
        if c["mode"] == "e2e":
            stages = c["stages_ms"]
            assert set(stages) == {"decode", "preprocess", "inference", "postprocess"}
            assert sum(s["mean"] for s in stages.values()) == pytest.approx(lat["mean"], rel=1e-6)
            assert c["sdk_classify_ms"]["p50"] > 0
        else:
            assert c["roofline"]["gmacs"] > 0


def test_peers_are_checked_against_ort_fp32_and_evaluated(bench):
    result, _ = bench
    peers = result["peers"]
    assert set(peers) == set(PEERS)
    assert peers["ort_int8_s8s8"]["origin"] == "quantized here"  # only the U8S8 file was given
    for name, p in peers.items():
        if not _runs_here(name):  # never silently: the reason names the extra to install
            assert p["status"] == "skipped" and f"skulens[{EXTRA[name]}]" in p["reason"], (name, p)
            continue
        assert p["status"] == "ok", (name, p)
        assert p["accuracy"]["n"] == 8 and 0 <= p["accuracy"]["top1"] <= p["accuracy"]["top5"] <= 1
    for name in ("torch_eager", "opencv_dnn", "openvino_fp32"):  # fp32 peers must reproduce ORT fp32
        if _runs_here(name):
            assert peers[name]["top1_agreement_with_fp32"] == 1.0
            assert peers[name]["max_abs_logit_diff_vs_fp32"] < 1e-3
    if _runs_here("openvino_int8"):  # OpenVINO runs the very INT8 file under test
        assert peers["openvino_int8"]["path"] == result["model"]
        assert peers["openvino_int8"]["same_file_as"] == result["subject"]
    if _runs_here("openvino_nncf"):  # NNCF's own INT8 copy of the fp32 model, as OpenVINO IR
        assert peers["openvino_nncf"]["origin"] == "quantized here"
        assert peers["openvino_nncf"]["path"].endswith(".xml")
        assert peers["openvino_nncf"]["nncf"]["calibration_images"] == 32  # the tiny model's own
        assert result["environment"]["nncf"]
        from skulens import ClassifierOptions, ImageClassifier  # the IR keeps our metadata: the SDK runs it

        clf = ImageClassifier.from_path(peers["openvino_nncf"]["path"], ClassifierOptions(backend="openvino"))
        assert list(clf.labels) == list(ImageClassifier.from_path(result["model"]).labels)
    # the ONNX models take uint8 pixels; PyTorch gets its own float tensors of the same images
    assert peers["torch_eager"]["input"].startswith("float32 NCHW")
    assert "input" not in peers["ort_fp32"]
    assert result["macs_per_image"] > 0


def test_pairs_are_interleaved_ratios_within_a_group(bench):
    result, _ = bench
    pairs = result["pairs"]
    assert len({p["id"] for p in pairs}) == len(pairs)
    for p in pairs:
        assert p["a"] != p["b"] and p["min"] <= p["round_median"] <= p["max"] and p["rounds"] == 2
        assert p["speedup"] > 0
    subject = [p for p in pairs if p["a"] == result["subject"] and p["mode"] == "model" and p["batch"] == 1]
    assert {p["b"] for p in subject} == {p for p in PEERS if _runs_here(p)} - {"ort_int8_u8s8"}
    v = result["verdict"]
    assert v["text"].startswith(("INT8 is faster here, by", "INT8 is not faster here"))
    assert set(v["speedup_by_activation"]) == {"u8", "s8"}
    assert v["export_check"]["export_would_choose"] in ("u8", "s8")


def test_fastest_peer_per_configuration(bench):
    """Per model-only group: the fastest peer, the SDK default's paired ratio to it, and how to
    get the fastest (an OpenVINO peer on our ONNX file is one option away)."""
    result, out = bench
    rows = result["fastest"]
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 3)]
    for r in rows:
        group = [c for c in result["configs"] if (c["mode"], c["threads"], c["batch"]) == ("model", r["threads"], r["batch"])
                 and c["status"] == "ok"]
        assert r["fastest"] == min(group, key=lambda c: c["latency_ms"]["p25"])["peer"]
        assert 0 < r["subject_vs_fastest"] <= 1.0 and r["within_5pct"] == (r["subject_vs_fastest"] >= 1 / 1.05)
        if r["fastest"] == result["subject"]:
            assert r["subject_vs_fastest"] == 1.0 and r["how"].startswith("the SDK's default")
        elif r["fastest"] in OPENVINO_PEERS:
            assert 'backend="openvino"' in r["how"]
    md = (out / "bench.md").read_text()
    n_ok = sum(r["within_5pct"] for r in rows)
    assert "## Fastest per configuration" in md and f"or within 5 % of it, in {n_ok} of 2 model-only" in md


def test_missing_openvino_extras_skip_their_peers_with_the_reason(tiny_models, grocery_subset, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("openvino", "nncf") else real(name, *a))
    fp32, _, _ = tiny_models
    cfg = BenchConfig(model=str(fp32), data=str(grocery_subset), peers=("ort_fp32",) + OPENVINO_PEERS,
                      threads=(1,), batch=(1,), e2e_batch=(), rounds=2, round_time=0.01, warmup_time=0.0,
                      eval_limit=4, cold_start_repeats=0, export_check=False, profile=False, charts=False,
                      out=str(tmp_path / "out"))
    result = run_benchmark(cfg)
    for name in OPENVINO_PEERS:
        peer = result["peers"][name]
        assert peer["status"] == "skipped" and "pip install 'skulens[openvino]'" in peer["reason"]
        (config,) = [c for c in result["configs"] if c["peer"] == name]
        assert config["status"] == "skipped" and "latency_ms" not in config
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "skipped: openvino is not installed: pip install 'skulens[openvino]'" in md
    assert result["configs"][0]["status"] == "ok"


def test_baseline_comparison_catches_a_forced_regression(bench, tmp_path):
    result, _ = bench
    same = compare_with_baseline(result, result)
    assert same["ok"] and same["checked"] > 0 and not same["regressions"]
    faster_before = copy.deepcopy(result)
    for p in faster_before["pairs"]:
        if p["a"] == result["subject"]:
            p["speedup"] *= 1.5  # the baseline was 1.5x better: now a 33% drop
    report = compare_with_baseline(result, faster_before, tolerance=0.10)
    n_subject = sum(p["a"] == result["subject"] for p in result["pairs"])
    assert not report["ok"] and len(report["regressions"]) == n_subject
    assert compare_with_baseline(result, faster_before, tolerance=0.5)["ok"]  # within a 50% tolerance
    better_acc = copy.deepcopy(result)
    better_acc["peers"][result["subject"]]["accuracy"]["top1"] += 0.05
    acc = compare_with_baseline(result, better_acc)
    assert [r["id"] for r in acc["regressions"]] == [f"{result['subject']}/top1"]
    with pytest.raises(SkulensError, match="schema_version"):
        compare_with_baseline(result, {**result, "schema_version": SCHEMA_VERSION + 1})

    # the same through the outputs and the CLI: exit code 1 on regression, 0 without
    base, cur = tmp_path / "base.json", tmp_path / "cur.json"
    base.write_text(json.dumps(faster_before))
    cur.write_text(json.dumps(result))
    cfg = BenchConfig(model=result["model"], baseline=str(base), out=str(tmp_path / "o"), charts=False)
    again = copy.deepcopy(result)
    write_outputs(again, cfg)
    assert again["baseline_comparison"]["ok"] is False and "REGRESSION" in markdown(again)
    from skulens.cli import main

    assert main(["bench", "--compare", str(cur), "--baseline", str(base)]) == 1
    assert main(["bench", "--compare", str(cur), "--baseline", str(cur)]) == 0
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert main(["bench", "--compare", str(cur), "--baseline", str(tmp_path / "junk.json")]) == 2


def test_a_peer_with_wrong_outputs_is_reported_not_timed(tiny_models, tiny_run, grocery_subset, tmp_path):
    """A checkpoint that is not the ONNX model's source gives different logits: the PyTorch peer
    must be marked wrong, and none of its configurations timed."""
    import torch

    from skulens.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_run[0] / "best.pt")
    torch.manual_seed(0)
    ckpt["model"] = {k: v + torch.randn_like(v) if k.startswith("head.") else v for k, v in ckpt["model"].items()}
    other = save_checkpoint(tmp_path / "other.pt", {k: v for k, v in ckpt.items() if k != "format"})
    fp32, _, _ = tiny_models
    cfg = BenchConfig(model=str(fp32), data=str(grocery_subset), checkpoint=str(other),
                      peers=("ort_fp32", "torch_eager"), threads=(1,), batch=(1,), e2e_batch=(),
                      rounds=2, round_time=0.01, warmup_time=0.0, eval_limit=8, cold_start_repeats=0,
                      export_check=False, profile=False, charts=False, out=str(tmp_path / "out"))
    result = run_benchmark(cfg)
    assert result["peers"]["torch_eager"]["status"] == "wrong"
    assert "outputs differ from ORT fp32" in result["peers"]["torch_eager"]["reason"]
    (torch_cfg,) = [c for c in result["configs"] if c["peer"] == "torch_eager"]
    assert torch_cfg["status"] == "wrong" and "latency_ms" not in torch_cfg
    assert result["subject"] == "ort_fp32" and result["configs"][0]["status"] == "ok"
    assert "**wrong**" in (tmp_path / "out" / "bench.md").read_text()


def test_statistics():
    s = summarize([0.001, 0.002, 0.003, 0.004], batch=2)
    lat = s["latency_ms"]
    assert lat["p50"] == pytest.approx(2.5) and lat["mean"] == pytest.approx(2.5)
    assert lat["p99"] == pytest.approx(np.percentile([1, 2, 3, 4], 99))
    assert s["throughput_ips"] == pytest.approx(2 / 0.0025) and lat["p99_reliable"] is False
    # drift hits both alike: per-round ratios stay 2.0 even though round 2 is 10x slower
    sp = paired_speedup([[1.0, 1.0], [10.0, 10.0]], [[2.0, 2.0], [20.0, 20.0]])
    assert sp == {"speedup": 2.0, "round_median": 2.0, "min": 2.0, "max": 2.0, "rounds": 2, "percentile": 25}
    # an iteration delayed by another process does not decide the ratio
    assert paired_speedup([[1.0, 1.0, 1.0, 50.0]], [[2.0, 2.0, 2.0, 2.0]])["speedup"] == 2.0
    with pytest.raises(ValueError):
        summarize([])


def test_config_validation_and_parsing():
    assert parse_int_list("1, 2,8") == (1, 2, 8)
    assert parse_peers("fp32,int8,torch") == ("ort_fp32", "ort_int8_u8s8", "ort_int8_s8s8", "torch_eager")
    assert parse_peers("all") == PEERS
    assert parse_peers("int8,openvino") == ("ort_int8_u8s8", "ort_int8_s8s8") + OPENVINO_PEERS
    assert parse_peers("ov_fp32,nncf") == ("ov_fp32", "openvino_nncf")  # unknown names are left for the check
    with pytest.raises(ValueError, match="unknown peers"):
        BenchConfig(model="m.onnx", peers=parse_peers("ov_fp32"))
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_int_list("1,two")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        BenchConfig(model="m.onnx", threads=(0,))
    with pytest.raises(ValueError, match="unknown peers"):
        BenchConfig(model="m.onnx", peers=("tflite",))


def test_cli_errors_are_clear(tmp_path, capsys):
    from skulens.cli import main

    assert main(["bench", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["bench", "m.onnx", "--threads", "0"]) == 2
    assert "threads must be >= 1" in capsys.readouterr().err


def test_bench_command_registers_without_importing_torch():
    code = ("import argparse, sys; import skulens.cli._bench as m; p = argparse.ArgumentParser(); "
            "m.register(p.add_subparsers()); p.parse_args(['bench', 'm.onnx', '--threads', '1,2']); "
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
