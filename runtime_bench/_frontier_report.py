"""The Pareto marks and the report files of ``skulens bench-table`` (see ``frontier.py``):
``frontier.md`` (a Markdown table, one row per model x backend x thread count) and
``frontier.png`` (top-1 against end-to-end p50, the Pareto front drawn)."""
from __future__ import annotations

import logging
from pathlib import Path

from skulens.internal import atomic_write

from ._files import write_result_files

log = logging.getLogger(__name__)

PNG_NAME = "frontier.png"
MISSING = "–"             # table cell of a value not measured (no dataset, a skipped measurement)
STAR = "★"                # Markdown mark of a Pareto-optimal row
MARKERS = {"fp32": "o", "int8": "s"}
COLORS = {"onnxruntime": "tab:blue", "openvino": "tab:green"}
SHORT = {"onnxruntime": "ORT", "openvino": "OV"}


# -- Pareto ---------------------------------------------------------------------------------------
def _measured(row: dict) -> bool:
    return row.get("top1") is not None and row.get("e2e_p50_ms") is not None


def dominates(a: dict, b: dict) -> bool:
    """Row ``a`` is at least as accurate (fine top-1) and at least as fast end to end (p50) as
    row ``b``, and strictly better in one of the two."""
    return (a["top1"] >= b["top1"] and a["e2e_p50_ms"] <= b["e2e_p50_ms"]
            and (a["top1"] > b["top1"] or a["e2e_p50_ms"] < b["e2e_p50_ms"]))


def pareto_marks(rows: list[dict]) -> list[bool | None]:
    """Per row: True when no other row of the same thread count dominates it (Pareto-optimal),
    False when one does, None when the row has no top-1 (no dataset) or no end-to-end p50."""
    marks = []
    for k, row in enumerate(rows):
        if not _measured(row):
            marks.append(None)
            continue
        rivals = [s for j, s in enumerate(rows) if j != k and _measured(s) and s.get("threads") == row.get("threads")]
        marks.append(not any(dominates(s, row) for s in rivals))
    return marks


# -- Markdown -------------------------------------------------------------------------------------
def _pct(x) -> str:
    return MISSING if x is None else f"{100 * x:.1f} %"


def _num(x, fmt: str = "{:.3f}") -> str:
    return MISSING if x is None else fmt.format(x)


def _vs(row: dict) -> str:
    check = row.get("vs_onnxruntime")
    if row.get("backend", "onnxruntime") == "onnxruntime":
        return "reference"
    if not check:
        return MISSING
    return (f"{100 * check['top1_agreement']:.1f} % top-1, max Δ {check['max_abs_logit_diff']:.1e} "
            + ("✓" if check["ok"] else "✗ differs"))


def markdown(result: dict) -> str:
    """The frontier as a Markdown table, one row per model x backend x thread count, with how it
    was measured and what was skipped."""
    cpu = result.get("cpu") or {}
    rows, batches = result["rows"], result.get("throughput_batch", [])
    threads = result["threads"] if isinstance(result["threads"], list) else [result["threads"]]
    lines = ["# Accuracy / latency / size frontier", "",
             f"Batch 1 at {', '.join(map(str, threads))} intra-op thread(s), {cpu.get('model', 'unknown CPU')}; "
             f"latencies are p50 / p99 of {result['rounds']} x {result['iters']} calls per row, all rows of a "
             f"thread count interleaved in one loop; end to end: JPEG bytes -> top-5 on {result['e2e_images']} "
             f"{result['e2e_inputs']}."
             + (f" Throughput: model-only images/s at batch {', '.join(map(str, batches))} (batch / median call "
                "time, same threads, rows interleaved)." if batches else "")
             + f" {STAR}: Pareto-optimal at its thread count (no other row has both a fine top-1 as high and "
               "an end-to-end p50 as low, one of them strictly).", ""]
    head = (["model", "backend", "threads", "input", "precision", "top-1 fine", "top-1 coarse",
             "model-only p50 / p99 ms", "end-to-end p50 / p99 ms"] + [f"img/s b{b}" for b in batches]
            + ["peak RSS MB", "size MB", "vs onnxruntime", "Pareto"])
    lines += ["| " + " | ".join(head) + " |", "|---|---|---:|---|---|" + "---:|" * (len(head) - 7) + "---|:-:|"]
    for r in rows:
        h, w = r["input_size"]
        cells = [f"{r['name']} ({r['model_name']})", r.get("backend", "onnxruntime"), str(r.get("threads", "")),
                 f"{h}x{w} {r['input_dtype']}", r["precision"], _pct(r["top1"]), _pct(r["coarse_top1"]),
                 f"{_num(r['model_only_p50_ms'])} / {_num(r.get('model_only_p99_ms'))}",
                 f"{_num(r['e2e_p50_ms'])} / {_num(r.get('e2e_p99_ms'))}"]
        cells += [_num(r.get(f"throughput_b{b}_ips"), "{:.0f}") for b in batches]
        cells += [_num(r.get("peak_rss_mb"), "{:.0f}"), f"{r['size_mb']:.2f}", _vs(r),
                  STAR if r.get("pareto") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _notes(result)
    return "\n".join(lines) + "\n"


def _notes(result: dict) -> list[str]:
    rows, notes = result["rows"], []
    if result.get("data"):
        sources = sorted({str(r["accuracy_source"]) for r in rows})
        n = sorted({str(r["n"]) for r in rows})
        notes.append(f"Accuracy on split '{result['split']}' of {result['data']} (n={', '.join(n)}; "
                     f"{', '.join(sources)}), measured once per model and backend and shown on each of its "
                     "thread counts' rows.")
    else:
        notes.append(f"No dataset: accuracy not measured ({MISSING}), no Pareto marks.")
    checks = [r["vs_onnxruntime"] for r in rows if r.get("vs_onnxruntime")]
    if checks:
        on = sorted({c["on"] for c in checks})
        notes.append(f"vs onnxruntime: top-1 agreement and largest |logit difference| against onnxruntime on "
                     f"the same file ({', '.join(on)}); ✓ within tolerance (1e-3 fp32, 5e-2 INT8, relative "
                     "to the largest logit when above 1).")
    for s in result.get("skipped", []):
        notes.append(f"**Skipped**: backend {s['backend']} for {s['model'] or 'all models'}: {s['reason']}")
    rss = result.get("rss") or {}
    if rss.get("measured"):
        base = rss.get("baseline_mb")
        notes.append(f"Peak RSS: {rss['how']}"
                     + (f"; importing skulens alone peaks at {base:.0f} MB." if base else "."))
    else:
        notes.append(f"Peak RSS: {rss.get('how', 'not measured')}.")
    if any(r.get("p99_reliable") is False for r in rows):
        notes.append("p99 of fewer than 100 samples per row is close to the maximum (raise --rounds).")
    for r in rows:
        for b, why in (r.get("throughput_skipped") or {}).items():
            notes.append(f"No throughput at batch {b} for {r['name']} ({r['backend']}, "
                         f"{r['threads']} thread(s)): {why}")
    return [line for note in notes for line in (note, "")][:-1]


# -- chart ----------------------------------------------------------------------------------------
def chart(result: dict, path) -> bool:
    """Scatter of top-1 (or, without a dataset, file size) against end-to-end p50, one panel per
    thread count, one labelled point per row: marker by precision, colour by backend, the
    Pareto-optimal rows ringed and joined; False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'skulens[train]')", PNG_NAME)
        return False
    rows = result["rows"]
    accuracy = all(r["top1"] is not None for r in rows)
    threads = sorted({r.get("threads", 1) for r in rows})
    several = len({r.get("backend") for r in rows}) > 1
    fig = Figure(figsize=(min(5.5 * len(threads) + 1.5, 16), 4.8))
    axes = fig.subplots(1, len(threads), sharey=True, squeeze=False)[0]
    for ax, t in zip(axes, threads):  # one panel per thread count: the front is per thread count
        mine = [r for r in rows if r.get("threads", 1) == t]
        for r in mine:
            x, y = r["e2e_p50_ms"], (100 * r["top1"] if accuracy else r["size_mb"])
            color = COLORS.get(r.get("backend", "onnxruntime"), "tab:gray")
            ax.scatter([x], [y], marker=MARKERS.get(r["precision"], "x"), s=60, color=color, zorder=3)
            if r.get("pareto"):
                ax.scatter([x], [y], marker="o", s=260, facecolors="none", edgecolors="gold", linewidths=2, zorder=2)
            label = r["name"] + (f" {SHORT.get(r.get('backend'), r.get('backend'))}" if several else "")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
        front = sorted((r["e2e_p50_ms"], 100 * r["top1"]) for r in mine if r.get("pareto"))
        if len(front) > 1:  # fastest first; the best top-1 reachable within each latency: a staircase
            ax.plot(*zip(*front), linestyle="--", color="goldenrod", linewidth=1, zorder=1, drawstyle="steps-post")
        ax.set_xlabel(f"end-to-end p50 (ms, JPEG -> top-5, batch 1, {t} thread(s))", fontsize=9)
        ax.margins(x=0.2, y=0.15)  # room for the labels of the outermost points
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"top-1 fine on {result['split']} (%)" if accuracy else "file size (MB), no dataset")
    handles = [Line2D([], [], marker=m, linestyle="", color="black", label=p) for p, m in MARKERS.items()]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=b) for b, c in COLORS.items()
                if any(r.get("backend", "onnxruntime") == b for r in rows)]
    if accuracy:
        handles.append(Line2D([], [], marker="o", linestyle="--", color="goldenrod", markerfacecolor="none",
                              label="Pareto-optimal"))
    axes[-1].legend(handles=handles, fontsize=8)
    fig.suptitle("Accuracy / latency frontier" if accuracy else "Size / latency (no accuracy)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: FigureCanvasAgg(fig).print_png(tmp))
    return True


def write_table(result: dict, out_dir) -> list[Path]:
    """Write frontier.json, frontier.md and frontier.png into ``out_dir``; the paths written."""
    return write_result_files(out_dir, "frontier", result, markdown(result), chart)
