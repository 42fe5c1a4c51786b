"""SIGKILL an export at random moments and check what it leaves (issue #12: all-or-nothing exports).

    python -m skulens.bench.kill_test --checkpoint runs/mine/best.pt --data PATH --kills 20 --out runs/kill

One uninterrupted ``skulens export --int8`` is timed first; then each round starts the same
export over the previous files and kills it after a uniformly drawn fraction of that time.
After every kill the folder must hold a *consistent set*: a report whose listed files exist
with the sha256s it names, and no INT8 file the report does not list. A set without its report
(killed inside the final renames, a window of microseconds) is counted apart as *incomplete*;
anything else is *inconsistent*. Staging folders of killed exports may remain until the next
export of the same file removes them: the last round checks that it did.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from skulens.internal import int8_path_for, rejected_path_for, report_path_for, sha256_file


def check_set(out: Path) -> str:
    """"complete", "incomplete" (models without their report) or "inconsistent: why"."""
    report_path = report_path_for(out)
    if not report_path.exists():
        return "incomplete" if out.exists() else "empty"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"inconsistent: unreadable report ({exc})"
    listed = {Path(report["fp32"]["path"]).name: report["fp32"]["sha256"]}
    if "int8" in report:
        listed[Path(report["int8"]["path"]).name] = report["int8"]["sha256"]
    for name, sha in listed.items():
        path = out.parent / name
        if not path.exists():
            return f"inconsistent: the report lists {name}, which is missing"
        if sha256_file(path) != sha:
            return f"inconsistent: {name} is not the file the report names"
    for extra in (int8_path_for(out), rejected_path_for(out)):
        if extra.exists() and extra.name not in listed:
            return f"inconsistent: {extra.name} is not part of the reported set"
    return "complete"


def _export(cmd: list[str], kill_after: float | None) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        return proc.wait()
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return -9


def kill_test(checkpoint: str, data: str | None, out_dir: Path, kills: int, seed: int = 0, int8: bool = True) -> dict:
    out = out_dir / "model.onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "skulens.cli", "-q", "export", checkpoint, "--out", str(out),
           "--calibration-size", "32", "--eval-limit", "64", *(["--data", data] if data else []),
           *(["--int8"] if int8 else [])]
    t0 = time.perf_counter()
    if _export(cmd, None) != 0:
        raise RuntimeError(f"the uninterrupted export failed: {' '.join(cmd)}")
    full = time.perf_counter() - t0
    rng = random.Random(seed)
    rounds, states = [], {}
    for i in range(kills):
        before = sha256_file(out) if out.exists() else None
        at = rng.uniform(0.02, 1.0) * full
        code = _export(cmd, at)
        state = check_set(out)
        changed = out.exists() and sha256_file(out) != before
        rounds.append({"round": i, "kill_after_s": round(at, 3), "exit": code, "state": state, "new_set": changed})
        key = state.split(":")[0]
        states[key] = states.get(key, 0) + 1
    final = _export(cmd, None)
    leftovers = sorted(p.name for p in out_dir.iterdir() if p.name.startswith("."))
    return {"checkpoint": checkpoint, "uninterrupted_s": round(full, 2), "kills": kills,
            "killed": sum(r["exit"] == -9 for r in rounds), "states": states,
            "inconsistent": [r for r in rounds if r["state"].startswith("inconsistent")],
            "final_export_exit": final, "final_state": check_set(out), "leftover_staging": leftovers,
            "rounds": rounds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.kill_test", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="classifier checkpoint to export")
    p.add_argument("--data", help="dataset for calibration and evaluation (default: the checkpoint's)")
    p.add_argument("--kills", type=int, default=20, help="export runs to kill (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="draws the kill times")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="export fp32 only")
    p.add_argument("--out", default="runs/kill_test", help="folder for the exported files and kill_test.json")
    args = p.parse_args(argv)
    summary = kill_test(args.checkpoint, args.data, Path(args.out), args.kills, args.seed, args.int8)
    Path(args.out, "kill_test.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=2))
    return 0 if not summary["inconsistent"] and summary["final_state"] == "complete" and not summary["leftover_staging"] else 1


if __name__ == "__main__":
    sys.exit(main())
