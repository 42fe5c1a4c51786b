"""runtime_bench helpers: CPU feature parsing, the INT8 verdict, MACs from the ONNX graph, QDQ fusion."""
import numpy as np
import pytest

from skulens.bench._cpu import cpu_report, int8_verdict, parse_cpuinfo, peak_macs_per_cycle
from skulens.bench._graph import count_macs, diagnose

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_cpu_features_are_parsed_for_x86_and_arm():
    x86 = parse_cpuinfo(X86)
    assert x86["vendor"] == "GenuineIntel" and x86["mhz"] == 2000.0
    assert {"avx512_vnni", "amx_int8"} <= x86["flags"]
    assert peak_macs_per_cycle("x86_64", x86["flags"], x86["vendor"])["int8"] == 1024  # AMX
    assert peak_macs_per_cycle("x86_64", {"avx2", "fma"})["int8"] == 32  # no VNNI: ~2x fp32
    arm = parse_cpuinfo(ARM)
    assert "asimddp" in arm["flags"] and arm["vendor"].startswith("ARM")
    dot = peak_macs_per_cycle("aarch64", arm["flags"])
    assert dot["int8"] == 4 * dot["fp32"] and "dot product" in dot["int8_path"]
    here = cpu_report()
    assert here["cpus_available"] >= 1 and isinstance(here["int8_dot_product"], bool)
    assert all(isinstance(v, bool) for v in here["features"].values())


def test_int8_verdict_is_plain():
    assert int8_verdict({"u8": 2.5, "s8": 1.1})["text"] == "INT8 is faster here, by 2.50x (U8S8 vs ORT fp32)"
    slow = int8_verdict({"u8": 0.8}, cpu={"int8_dot_product": False})
    assert slow["int8_faster"] is False and "1.25x slower" in slow["text"] and "no int8 dot-product" in slow["text"]
    assert int8_verdict({"s8": 1.02})["text"].startswith("INT8 is not faster here: 1.02x")
    assert int8_verdict({})["int8_faster"] is None


def test_macs_counted_from_the_onnx_graph_match_pytorch(tiny_models, tiny_run):
    from skulens.training.checkpoint import load_checkpoint, model_from_checkpoint
    from skulens.training.models import count_macs as torch_macs

    fp32, int8, _ = tiny_models
    model = model_from_checkpoint(load_checkpoint(tiny_run[0] / "best.pt"))
    expected = torch_macs(model, (3, 32, 32))
    got = count_macs(fp32)
    assert got["macs"] == expected and not got["uncounted_nodes"]
    assert count_macs(int8)["macs"] == expected  # QDQ keeps the float ops' shapes


def test_diagnostics_see_qdq_fusion_and_profile(tiny_models):
    fp32, int8, _ = tiny_models
    x = np.zeros((1, 32, 32, 3), np.uint8)  # the tiny model takes uint8 NHWC pixels
    d8 = diagnose(int8, x, threads=1)
    assert d8["ops"]["source_ops"]["QuantizeLinear"] > 0
    assert d8["ops"]["qdq_fully_fused"] is True
    share = d8["profile"]["op_share"]
    assert share and sum(share.values()) == pytest.approx(1.0, abs=1e-3)
    d32 = diagnose(fp32, x, threads=1, profile=False)
    assert d32["ops"]["qdq_fully_fused"] is None and "profile" not in d32


def test_arch_screen_times_variants_through_the_export_path(capsys):
    from skulens.bench.arch_screen import main, screen

    rows = screen([{}, {"patch_stem": False, "stem_stride": 2, "strides": [2, 2, 2, 2]}],
                  input_size=32, num_classes=5, rounds=1, iters=2)
    assert [r["input"] for r in rows] == ["uint8", "float32"]  # only the patchify stem folds
    for r in rows:
        assert r["mmac"] > 0 and r["int8_ms"] > 0 and r["torch_ms"] > 0
        assert r["ratio"] == pytest.approx(r["torch_ms"] / r["int8_ms"], rel=0.05)
    with pytest.raises(SystemExit):
        main(["[1, 2]"])
    assert "JSON dict" in capsys.readouterr().err


def test_arch_screen_layers_reports_marginal_cost_per_layer(capsys):
    from skulens.bench.arch_screen import main, screen_layers

    rows = screen_layers([{"kind": "conv3x3", "channels": 8, "size": 8}, {"kind": "basic", "channels": 8, "size": 4}],
                         rounds=1, iters=2, lo=1, hi=2)
    assert [(r["kind"], r["channels"], r["size"]) for r in rows] == [("conv3x3", 8, 8), ("basic", 8, 4)]
    for r in rows:
        assert set(r) >= {"int8_us", "torch_us", "ratio"}
        assert r["ratio"] is None or r["ratio"] == pytest.approx(r["torch_us"] / r["int8_us"], rel=0.05)
    with pytest.raises(SystemExit):
        main(["--layers", '{"kind": "depthwise", "channels": 8, "size": 4}'])
    assert "layer kind must be one of" in capsys.readouterr().err
