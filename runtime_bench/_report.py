"""Benchmark outputs: JSON (stable schema), a Markdown report, PNG charts, baseline comparison."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from skulens import SkulensError
from skulens.internal import atomic_write_bytes

log = logging.getLogger(__name__)
JSON_NAME, MD_NAME = "bench.json", "bench.md"
LATENCY_PNG, ACCURACY_PNG = "latency.png", "accuracy_vs_latency.png"


def _ok(configs, **match):
    return [c for c in configs if c.get("status") == "ok" and "latency_ms" in c
            and all(c.get(k) == v for k, v in match.items())]


def _ref_group(result) -> tuple[int, int]:
    s = result["settings"]
    return (1 if 1 in s["threads"] else min(s["threads"])), (1 if 1 in s["batch"] else min(s["batch"]))


def _f(v, fmt="{:.3f}", none="–"):
    return none if v is None else fmt.format(v)


# -- baseline -------------------------------------------------------------------------------------
def compare_with_baseline(current: dict, baseline: dict, tolerance: float = 0.10,
                          accuracy_tolerance_pp: float = 1.0) -> dict:
    """Compare the speedup ratios (and top-1) of the model under test with a saved result.

    A ratio lower than ``baseline * (1 - tolerance)``, a configuration that ran before and is
    now failed or wrong, or a top-1 lower by more than ``accuracy_tolerance_pp`` points is a
    regression (top-1 only when both runs evaluated the same images). Absolute latencies are
    not compared: they belong to one machine.
    """
    if baseline.get("schema_version") != current.get("schema_version"):
        raise SkulensError(f"baseline schema_version {baseline.get('schema_version')} differs from "
                           f"this result's {current.get('schema_version')}: re-run the baseline")
    subject = current["subject"]
    now = {p["id"]: p for p in current.get("pairs", [])}
    status = {c["id"]: c.get("status") for c in current.get("configs", [])}
    rows = []
    for bp in baseline.get("pairs", []):
        if bp["a"] != subject:
            continue
        cp = now.get(bp["id"])
        if cp is None:
            a_id = f"{bp['a']}/{bp['mode']}/t{bp['threads']}/b{bp['batch']}"
            if status.get(a_id) in ("failed", "wrong"):
                rows.append({"id": bp["id"], "baseline": bp["speedup"], "current": None,
                             "change": None, "regressed": True, "why": f"{a_id} is now {status[a_id]}"})
            continue
        change = cp["speedup"] / bp["speedup"] - 1.0
        regressed = cp["speedup"] < bp["speedup"] * (1.0 - tolerance)
        rows.append({"id": bp["id"], "baseline": bp["speedup"], "current": cp["speedup"],
                     "change": round(change, 4), "regressed": regressed,
                     "why": f"speedup fell by {-change:.1%} (tolerance {tolerance:.0%})" if regressed else None})
    b_acc = (baseline.get("peers", {}).get(subject) or {}).get("accuracy") or {}
    c_acc = (current.get("peers", {}).get(subject) or {}).get("accuracy") or {}
    same_eval = all((baseline.get("settings") or {}).get(k) == (current.get("settings") or {}).get(k)
                    for k in ("eval_split", "eval_n", "dataset", "seed"))
    if "top1" in b_acc and "top1" in c_acc and same_eval:
        drop = 100.0 * (b_acc["top1"] - c_acc["top1"])
        rows.append({"id": f"{subject}/top1", "baseline": b_acc["top1"], "current": c_acc["top1"],
                     "change": round(-drop, 3), "regressed": drop > accuracy_tolerance_pp,
                     "why": f"top-1 fell by {drop:.2f} pp (tolerance {accuracy_tolerance_pp} pp)"
                     if drop > accuracy_tolerance_pp else None})
    regressions = [r for r in rows if r["regressed"]]
    return {"tolerance": tolerance, "accuracy_tolerance_pp": accuracy_tolerance_pp, "checked": len(rows),
            "rows": rows, "regressions": regressions, "ok": not regressions}


# -- Markdown -------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    cpu, s, peers, configs = result["cpu"], result["settings"], result["peers"], result["configs"]
    t, b = _ref_group(result)
    L = [f"# skulens bench: `{Path(result['model']).name}`", ""]
    feats = ", ".join(k for k, v in cpu["features"].items() if v) or "no INT8-relevant extensions"
    L.append(f"**CPU** {cpu['model']} ({cpu['arch']}, {cpu['cpus_available']} CPUs, "
             f"{_f(cpu.get('mhz'), '{:.0f}')} MHz): {feats}.  ")
    v = result["verdict"]
    line = f"**{v['text']}** (model-only, batch {v.get('batch')}, {v.get('threads')} thread)"
    ec = v.get("export_check") or {}
    if "export_would_choose" in ec:
        line += (f"; export's activation check (choose_activation_type) here picks **{ec['export_would_choose'].upper()}S8**"
                 + ("" if ec.get("agrees_with_this_benchmark", True) else " (disagrees with the fresh-process timing above)"))
    L += [line + ".", ""]
    goal = _fastest_headline(result)
    if goal:
        L += [goal, ""]
    ml = result.get("machine_load") or {}
    if ml.get("busy"):
        L += [f"> **Warning: the machine was busy** (load average {ml['loadavg_1_5_15_start'][0]} at the start, "
              f"{(ml.get('loadavg_1_5_15_end') or ['?'])[0]} at the end, on {cpu['cpus_available']} CPUs): absolute "
              "latencies are inflated; interleaving protects the ratios only partly (see the min–max ranges).", ""]
    L.append(f"Inputs: {s['eval_n']} {s['inputs']} ({s['eval_split']} split{', ' + s['dataset'] if s.get('dataset') else ''}); "
             f"{s['rounds']} interleaved rounds x {s['round_time_s']} s per configuration, each in a fresh process.")
    L += ["", f"## Models (model-only, batch {b}, {t} thread)", "",
          "| peer | format | precision | size MB | top-1 | top-5 | top-1 agree fp32 | p50 ms | p90 ms | p99 ms "
          "| img/s | speedup vs fp32 | create ms | peak RSS MB | status |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    speed = {p["a"]: p["speedup"] for p in result["pairs"] if p["b"] == "ort_fp32" and
             (p["mode"], p["threads"], p["batch"]) == ("model", t, b)}
    speed.update({p["b"]: 1 / p["speedup"] for p in result["pairs"] if p["a"] == "ort_fp32" and
                  (p["mode"], p["threads"], p["batch"]) == ("model", t, b)})
    for name, p in peers.items():
        c = next(iter(_ok(configs, peer=name, mode="model", threads=t, batch=b)), {})
        lat, acc = c.get("latency_ms", {}), p.get("accuracy", {})
        size = p.get("size_bytes")
        L.append(f"| {name}{' (under test)' if name == result['subject'] else ''} | {p['format']} | {p['precision']} "
                 f"| {_f(size and size / 1e6, '{:.2f}')} | {_f(acc.get('top1'), '{:.4f}')} | {_f(acc.get('top5'), '{:.4f}')} "
                 f"| {_f(p.get('top1_agreement_with_fp32'), '{:.3f}')} | {_f(lat.get('p50'))} | {_f(lat.get('p90'))} "
                 f"| {_f(lat.get('p99'))}{'' if lat.get('p99_reliable', True) else '*'} | {_f(c.get('throughput_ips'), '{:.0f}')} "
                 f"| {_f(speed.get(name, 1.0 if name == 'ort_fp32' and c else None), '{:.2f}x')} "
                 f"| {_f(c.get('create_s') and c['create_s'] * 1e3, '{:.1f}')} | {_f(c.get('peak_rss_mb'), '{:.0f}')} "
                 f"| {p['status']}{': ' + p['reason'] if p.get('reason') else ''} |")
    L += ["", "`*` fewer than 100 samples: p99 is close to the maximum.", "",
          "## Threads x batch sweep (model-only p50 ms per batch / images per s)", ""]
    groups = sorted({(c["threads"], c["batch"]) for c in configs if c["mode"] == "model"})
    L.append("| peer | " + " | ".join(f"t{gt} b{gb}" for gt, gb in groups) + " |")
    L.append("|---|" + "---:|" * len(groups))
    for name in peers:
        cells = []
        for gt, gb in groups:
            c = next((c for c in configs if (c["peer"], c["mode"], c["threads"], c["batch"]) == (name, "model", gt, gb)), None)
            cells.append("–" if c is None else f"{c['latency_ms']['p50']:.3f} / {c['throughput_ips']:.0f}"
                         if "latency_ms" in c else c.get("status", "–"))
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    L += _fastest_md(result)
    e2e = [c for c in configs if c["mode"] == "e2e" and "latency_ms" in c]
    if e2e:
        L += ["", f"## End-to-end: encoded JPEG -> top-{s['top_k']} (p50 ms)", "",
              "| peer | threads | batch | decode | preprocess | inference | postprocess | total p50 | total p99 "
              "| SDK classify p50 | model-only p50 | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in e2e:
            st = c["stages_ms"]
            m = next(iter(_ok(configs, peer=c["peer"], mode="model", threads=c["threads"], batch=c["batch"])), {})
            L.append(f"| {c['peer']} | {c['threads']} | {c['batch']} | " + " | ".join(
                f"{st[k]['p50']:.3f} ({st[k]['share']:.0%})" for k in ("decode", "preprocess", "inference", "postprocess"))
                + f" | {c['latency_ms']['p50']:.3f} | {c['latency_ms']['p99']:.3f} | {_f(c.get('sdk_classify_ms', {}).get('p50'))} "
                f"| {_f(m.get('latency_ms', {}).get('p50'))} | {_f(c.get('peak_rss_mb'), '{:.0f}')} |")
    st = result["startup"]
    L += ["", "## Start-up (fresh interpreter, median)", ""]
    L.append(f"- interpreter start: {st['interpreter_start_s'] * 1e3:.0f} ms; `import skulens`: "
             f"{_f(st.get('import_sdk_s') and st['import_sdk_s'] * 1e3, '{:.0f}')} ms "
             f"(peak RSS {_f(st.get('import_sdk_rss_mb'), '{:.0f}')} MB)")
    for name, cs in (st.get("cold_start_threads1") or {}).items():
        if "error" in cs:
            L.append(f"- {name}: cold start failed: {cs['error']}")
        else:
            L.append(f"- {name}: import skulens + session + first result = **{cs['total_s'] * 1e3:.0f} ms** "
                     f"(fastest of the repeats {cs.get('total_s_min', cs['total_s']) * 1e3:.0f} ms) "
                     f"({cs['import_s'] * 1e3:.0f} + {cs['create_s'] * 1e3:.0f} + {cs['first_result_s'] * 1e3:.0f}), "
                     f"peak RSS **{cs['peak_rss_mb']:.0f} MB**")
    subj = [p for p in result["pairs"] if p["a"] == result["subject"]]
    if subj:
        L += ["", f"## Speedup of `{result['subject']}` over each peer", "",
              "Ratio of lower-quartile latencies over all interleaved rounds; min–max: the same ratio round by round.", "",
              "| vs | mode | threads | batch | speedup | min–max over rounds |", "|---|---|---:|---:|---:|---|"]
        L += [f"| {p['b']} | {p['mode']} | {p['threads']} | {p['batch']} | {p['speedup']:.2f}x | "
              f"{p['min']:.2f}–{p['max']:.2f} |" for p in subj]
    L += _roofline_md(result) + _diagnostics_md(result)
    bad = [c for c in configs if c.get("status") not in ("ok", None)]
    if bad or result.get("notes"):
        L += ["", "## Not timed / notes", ""]
        L += [f"- `{c['id']}`: **{c['status']}**: {c.get('reason')}" for c in bad]
        L += [f"- {n}" for n in result.get("notes", [])]
    bc = result.get("baseline_comparison")
    if bc:
        L += ["", f"## Baseline comparison: {'OK' if bc['ok'] else 'REGRESSION'} "
              f"({bc['checked']} checked, tolerance {bc['tolerance']:.0%})", ""]
        L += [f"- {'**REGRESSED**' if r['regressed'] else 'ok'} `{r['id']}`: {r['baseline']} -> {r['current']}"
              + (f" ({r['why']})" if r.get("why") else "") for r in bc["rows"]]
    return "\n".join(L) + "\n"


def _fastest_headline(result) -> str | None:
    """One line: in how many model-only configurations the SDK's default path is the fastest
    measured (or within 5 % of it), and where it is not, how to get the fastest."""
    rows = [r for r in result.get("fastest") or [] if r.get("within_5pct") is not None]
    if not rows:
        return None
    ok = [r for r in rows if r["within_5pct"]]
    text = (f"**The SDK's default path (`{result['subject']}`) is the fastest measured, or within 5 % of it, "
            f"in {len(ok)} of {len(rows)} model-only configurations**")
    others = {r["fastest"] for r in rows if not r["within_5pct"]}
    if others:
        text += "; elsewhere the fastest is " + ", ".join(
            f"`{name}` ({next(r['how'] for r in rows if r['fastest'] == name)})" for name in sorted(others))
    return text + "."


def _fastest_md(result) -> list[str]:
    """Is the SDK's default path the fastest measured, within 5 % of it, or how to get the fastest."""
    rows = result.get("fastest") or []
    if not rows:
        return []
    L = ["", "## Fastest per configuration (model-only)", "",
         f"`{result['subject']}` is the SDK's default path for this model. Ratio: its interleaved paired speedup "
         "over the fastest peer (1.00x: it is the fastest).", "",
         "| threads | batch | fastest | p50 ms | default p50 ms | default vs fastest | within 5 % | how to get the fastest |",
         "|---:|---:|---|---:|---:|---:|---|---|"]
    for r in rows:
        within = r.get("within_5pct")
        L.append(f"| {r['threads']} | {r['batch']} | {r['fastest']} | {r['fastest_p50_ms']:.3f} | "
                 f"{_f(r.get('subject_p50_ms'))} | {_f(r.get('subject_vs_fastest'), '{:.2f}x')} | "
                 f"{'–' if within is None else 'yes' if within else '**no**'} | {r['how']} |")
    return L


def _roofline_md(result) -> list[str]:
    macs = result.get("macs_per_image")
    if not macs:
        return []
    cpu, ceil = result["cpu"], result.get("gemm_ceiling") or {}
    peak = cpu.get("peak_gmacs_per_core") or {}
    L = ["", "## Roofline", "",
         f"{macs / 1e6:.1f} M multiply-accumulates per image (counted from the ONNX graph). Per core: measured "
         f"GEMM ceiling fp32 {_f(ceil.get('fp32_gmacs'), '{:.1f}')} / int8 {_f(ceil.get('int8_gmacs'), '{:.1f}')} GMAC/s; "
         f"estimated peak fp32 {_f(peak.get('fp32'), '{:.1f}')} / int8 {_f(peak.get('int8'), '{:.1f}')} GMAC/s "
         f"({cpu['peak_macs_per_cycle_per_core']['int8_path']}; {cpu['peak_note']}).", "",
         "| configuration | GMAC/s | per thread | of GEMM ceiling | of est. peak |", "|---|---:|---:|---:|---:|"]
    for c in result["configs"]:
        r = c.get("roofline")
        if r:
            L.append(f"| {c['id']} | {r['gmacs']:.1f} | {r['gmacs_per_thread']:.1f} | "
                     f"{_f(r.get('fraction_of_measured_gemm_1thread'), '{:.0%}')} | {_f(r.get('fraction_of_estimated_peak'), '{:.0%}')} |")
    return L


def _diagnostics_md(result) -> list[str]:
    L = []
    for name, d in result.get("diagnostics", {}).items():
        if not isinstance(d, dict) or "ops" not in d:
            continue
        ops, prof = d["ops"], d.get("profile") or {}
        if "optimized_ops" not in ops:
            continue
        opt = ", ".join(f"{k} x{v}" for k, v in sorted(ops["optimized_ops"].items(), key=lambda kv: -kv[1]))
        fused = ops.get("qdq_fully_fused")
        L.append(f"- **{name}**: ops after optimisation: {opt}" + (
            "" if fused is None else f"; QDQ fully fused into integer kernels: **{'yes' if fused else 'NO'}**"))
        if prof.get("op_share"):
            share = ", ".join(f"{k} {v:.0%}" for k, v in list(prof["op_share"].items())[:5])
            top = prof["top_nodes"][0] if prof.get("top_nodes") else None
            L.append(f"  - profile (batch 1, 1 thread): run {prof['model_run_us']:.0f} us, kernels {prof['kernel_us']:.0f} us: "
                     f"{share}" + (f"; slowest node {top['node']} ({top['op']}) {top['us']:.0f} us" if top else ""))
    return (["", "## Diagnostics (onnxruntime, batch 1, 1 thread)", ""] + L) if L else []


# -- charts ---------------------------------------------------------------------------------------
def charts(result: dict, out: Path) -> list[str]:
    """latency.png (per-image latency of every configuration) and accuracy_vs_latency.png."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no charts (pip install 'skulens[train]')")
        return []
    written = []
    rows = [c for c in result["configs"] if "latency_ms" in c]
    if rows:
        fig = Figure(figsize=(8, 0.28 * len(rows) + 1.5))
        ax = fig.add_subplot()
        labels = [f"{c['peer']} {c['mode']} t{c['threads']} b{c['batch']}" for c in rows]
        p50 = [c["latency_ms"]["p50"] / c["batch"] for c in rows]
        p90 = [c["latency_ms"]["p90"] / c["batch"] for c in rows]
        p99 = [c["latency_ms"]["p99"] / c["batch"] for c in rows]
        y = list(range(len(rows)))
        colors = [_color(c["peer"]) for c in rows]
        ax.barh(y, p50, color=colors, xerr=[[0] * len(rows), [a - b for a, b in zip(p90, p50)]], capsize=2)
        ax.plot(p99, y, "k|", markersize=8, label="p99")
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        _plain_ticks(ax)
        ax.set_xlabel("ms per image (bar: p50, whisker: p90, tick: p99)")
        ax.set_title(f"Latency by configuration: {Path(result['model']).name}")
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        FigureCanvasAgg(fig).print_png(str(out / LATENCY_PNG))
        written.append(LATENCY_PNG)
    t, b = _ref_group(result)
    pts = []
    for name, p in result["peers"].items():
        c = next(iter(_ok(result["configs"], peer=name, mode="model", threads=t, batch=b)), None)
        if c and "top1" in (p.get("accuracy") or {}):
            pts.append((name, c["latency_ms"]["p50"], p["accuracy"]["top1"]))
    if pts:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for name, lat, acc in pts:
            ax.scatter(lat, acc, s=40)
            ax.annotate(name, (lat, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        _plain_ticks(ax)
        ax.set_xlabel(f"model-only p50 latency, ms (batch {b}, {t} thread)")
        ax.set_ylabel(f"top-1 ({result['settings']['eval_split']}, n={result['settings']['eval_n']})")
        ax.set_title("Accuracy vs latency")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        FigureCanvasAgg(fig).print_png(str(out / ACCURACY_PNG))
        written.append(ACCURACY_PNG)
    return written


def _color(peer: str) -> str:
    if peer.startswith("openvino"):
        return "tab:orange" if peer != "openvino_fp32" else "tab:brown"
    return "tab:green" if "int8" in peer else "tab:blue" if peer == "ort_fp32" else "tab:gray"


def _plain_ticks(ax) -> None:
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=6)


def _rounded(obj, digits: int = 6):
    """Floats to ``digits`` significant digits, so the JSON stays readable and diffable."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def write_outputs(result: dict, cfg) -> None:
    """bench.json, bench.md and the charts into ``cfg.out``; the baseline comparison first."""
    out = Path(cfg.out)
    if cfg.baseline:
        result["baseline_comparison"] = compare_with_baseline(
            result, load_json(cfg.baseline), cfg.tolerance, cfg.accuracy_tolerance_pp)
        result["baseline_comparison"]["baseline"] = str(cfg.baseline)
    result["charts"] = charts(result, out) if cfg.charts else []
    atomic_write_bytes(out / JSON_NAME, json.dumps(_rounded(result), indent=2).encode())
    atomic_write_bytes(out / MD_NAME, markdown(result).encode())


def load_json(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkulensError(f"{path}: not a readable benchmark JSON ({exc})") from exc
    if not isinstance(data, dict) or "schema_version" not in data or "pairs" not in data:
        raise SkulensError(f"{path}: not a skulens benchmark result (no schema_version / pairs)")
    return data
