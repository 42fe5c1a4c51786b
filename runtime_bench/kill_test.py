"""SIGKILL an export or a training run at random moments and check what it leaves (issue #12).

    python -m skulens.bench.kill_test --checkpoint runs/mine/best.pt --data PATH --kills 20 --out runs/kill
    python -m skulens.bench.kill_test train --kills 20 --out runs/kill_train

Exports must be all-or-nothing.

One uninterrupted ``skulens export --int8`` is timed first; then each round starts the same
export over the previous files and kills it after a uniformly drawn fraction of that time.
After every kill the folder must hold a *consistent set*: a report whose listed files exist
with the sha256s it names, and no INT8 file the report does not list. A set without its report
(killed inside the final renames, a window of microseconds) is counted apart as *incomplete*;
anything else is *inconsistent*. Staging folders of killed exports may remain until the next
export of the same file removes them: the last round checks that it did.

Training must resume exactly (``train``): one uninterrupted tiny run is the reference; then the
same run is SIGKILLed ``kills`` times, each time at a drawn moment (while it starts, inside an
epoch, or just as a run file's temp file appears, to catch checkpoint writes) and continued with
``--resume``, then resumed once more to its end. After every kill its checkpoints must load and
never go back an epoch; at the end no temp file may remain and best.pt/last.pt must hold the
reference's weights, EMA and optimizer state bit for bit (``torch.equal``), and its history
(``seconds`` aside). Results: ``kill_test.json`` and ``kill_test.md`` in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from skulens.internal import (add_dataclass_flags, dataclass_from_args, int8_path_for, option, rejected_path_for,
                              report_path_for, sha256_file)

from ._files import write_result_files

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery-store" / "dataset"


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


# -- training: --resume after SIGKILLs ends where the uninterrupted run does ------------------------

@dataclass(frozen=True)
class TrainKillConfig:
    """The tiny training run that is killed, and how often."""
    data: str | None = option(None, "train: the dataset (default: a Grocery subset written into --out)")
    grocery: str = option(str(GROCERY), "train: the Grocery Store dataset the default subset comes from")
    classes: int = option(6, "train: classes of the default subset")
    per_class: int = option(8, "train: training photos per class of the default subset (+3 val, +2 test)")
    model: str = option("edge_resnet_tiny", "train: the model")
    epochs: int = option(24, "train: epochs of the run (enough that the kills do not finish it)")
    input_size: int = option(32, "train: input size")
    batch_size: int = option(16, "train: batch size")
    mix_prob: float = option(0.5, "train: CutMix/MixUp probability (random draws a resume must restore)")
    dropout: float = option(0.5, "train: dropout before the classifier (ditto)")
    ema_decay: float = option(0.9, "train: EMA of the weights")
    num_workers: int = option(1, "train: loader processes (their seeds come from the loader's generator)")
    kills: int = option(20, "runs to kill")
    seed: int = option(0, "draws the kill moments")
    out: str = option("runs/kill_test", "folder for the run folders and kill_test.json/.md")


AIMS = {"write": 0.45, "epoch": 0.45, "start": 0.10}  # where a kill is aimed, and how often


def _train_cmd(cfg: TrainKillConfig, data: str, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "skulens.training", "--data", data, "--out", str(out), "--model", cfg.model,
            "--epochs", str(cfg.epochs), "--input-size", str(cfg.input_size), "--batch-size", str(cfg.batch_size),
            "--lr", "0.05", "--mix-prob", str(cfg.mix_prob), "--ema-decay", str(cfg.ema_decay),
            "--num-workers", str(cfg.num_workers), "--threads", "1", "--model-kwargs",
            json.dumps({"dropout": cfg.dropout}), *(["--resume"] if resume else [])]


def grocery_subset(src: Path, dst: Path, classes: int, per_class: int) -> Path:
    """A split-list dataset of ``classes`` Grocery classes (spread over the list) with absolute paths."""
    src = src.resolve()
    rows = [r for r in csv.reader((src / "classes.csv").read_text().splitlines()[1:]) if r]
    ids = [int(rows[round(i * (len(rows) - 1) / max(1, classes - 1))][1]) for i in range(classes)]
    names = {int(r[1]): r[0] for r in rows}
    lists = {split: [ln.split(", ") for ln in (src / f"{split}.txt").read_text().splitlines() if ln]
             for split in ("train", "test")}
    out = {"train": [], "val": [], "test": []}
    for new, old in enumerate(ids):
        train = [p for p, f, *_ in lists["train"] if int(f) == old]
        test = [p for p, f, *_ in lists["test"] if int(f) == old]
        out["train"] += [f"{src / p}, {new}" for p in train[:per_class]]
        out["val"] += [f"{src / p}, {new}" for p in train[per_class:per_class + 3]]
        out["test"] += [f"{src / p}, {new}" for p in test[:2]]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "classes.csv").write_text("name,id\n" + "".join(f"{names[old]},{new}\n" for new, old in enumerate(ids)))
    for split, lines in out.items():
        (dst / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return dst


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def _inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _kill_round(cmd: list[str], out: Path, aim: str, rng: random.Random, timing: dict) -> dict:
    """Start ``cmd``, SIGKILL it at the moment ``aim`` draws; returns what happened."""
    last = out / "last.pt"
    before = _inode(last)
    skip = rng.randrange(4)  # "write": let this many run-file writes through first (args.json, best, last, csv)
    delay = rng.uniform(0, 1) * (timing["epoch_s"] if aim == "epoch" else timing["startup_s"])
    stale = set(_temp_files(out))  # an earlier kill's, which this run must remove
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, seen, kill_at = time.perf_counter(), set(stale), None
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if aim == "start":
            kill_at = delay
        elif aim == "epoch" and kill_at is None and _inode(last) != before:  # an epoch done: into the next
            kill_at = now + delay
        elif aim == "write":
            temps = set(_temp_files(out)) - seen
            if temps and len(seen - stale) >= skip:
                break
            seen |= temps
        if kill_at is not None and now >= kill_at:
            break
        time.sleep(0.0005 if aim == "write" else 0.005)
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    now_there = set(_temp_files(out))
    left = sorted(now_there - stale)
    # mid-write: a run file's temp file remains (killed between a write's start and its rename);
    # mid-epoch: between writes after this process saved an epoch; before-first-save: imports,
    # decoding, resuming or its first epoch
    landed = ("finished" if finished else "mid-write" if left else "mid-epoch" if _inode(last) != before
              else "before-first-save")
    return {"aim": aim, "landed": landed, "exit": code, "after_s": round(time.perf_counter() - t0, 3),
            "temp_files": left, "stale_removed": len(stale - now_there), "stale_kept": len(stale & now_there)}


def _check_run(out: Path) -> tuple[list[str], int]:
    """(unreadable run files, last.pt's epoch or -1): every checkpoint must load."""
    from skulens.training.checkpoint import load_checkpoint

    bad, epoch = [], -1
    for name in ("best.pt", "last.pt"):
        if (out / name).exists():
            try:
                ckpt = load_checkpoint(out / name)
                epoch = ckpt["epoch"] if name == "last.pt" else epoch
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                bad.append(f"{name}: {exc}")
    for name, parse in (("args.json", json.loads), ("results.csv", lambda t: list(csv.DictReader(t.splitlines())))):
        if (out / name).exists():
            try:
                parse((out / name).read_text())
            except Exception as exc:  # noqa: BLE001
                bad.append(f"{name}: {exc}")
    return bad, epoch


def _same_weights(ref: Path, got: Path) -> dict:
    """Per checkpoint: tensors compared (weights, EMA, optimizer state) and those that differ."""
    import torch

    from skulens.training.checkpoint import load_checkpoint

    def tensors(ckpt):
        out = {f"{k}.{n}": t for k in ("model", "raw_model", "ema") for n, t in (ckpt.get(k) or {}).items()}
        for pid, state in ckpt["optimizer"]["state"].items():
            out.update({f"optimizer.{pid}.{n}": t for n, t in state.items() if isinstance(t, torch.Tensor)})
        return out

    result = {}
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(ref / name), load_checkpoint(got / name)
        ta, tb = tensors(a), tensors(b)
        differ = sorted(k for k in ta.keys() | tb.keys() if k not in ta or k not in tb or not torch.equal(ta[k], tb[k]))
        strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in c["history"]] for c in (a, b)]
        result[name] = {"epoch": [a["epoch"], b["epoch"]], "tensors": len(ta), "differ": differ,
                        "identical": not differ and a["epoch"] == b["epoch"], "history_identical": strip[0] == strip[1]}
    return result


def kill_train(cfg: TrainKillConfig) -> dict:
    out_dir = Path(cfg.out)
    ref, run = out_dir / "train_reference", out_dir / "train_killed"
    for folder in (ref, run):  # this test's own run folders, from an earlier invocation
        shutil.rmtree(folder, ignore_errors=True)
    data = cfg.data or str(grocery_subset(Path(cfg.grocery), out_dir / "train_data", cfg.classes, cfg.per_class))
    t0 = time.perf_counter()
    done = subprocess.run(_train_cmd(cfg, data, ref, False), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted training failed:\n{done.stderr.decode()[-2000:]}")
    full = time.perf_counter() - t0
    train_s = json.loads((ref / "metrics.json").read_text())["train_seconds"]
    timing = {"uninterrupted_s": round(full, 2), "epoch_s": train_s / cfg.epochs,
              "startup_s": max(0.5, full - train_s) / 2}  # imports, decoding, model (and the final evaluation)
    rng = random.Random(cfg.seed)
    rounds, progress = [], -1
    for i in range(cfg.kills):
        aim = rng.choices(list(AIMS), weights=list(AIMS.values()))[0]
        r = _kill_round(_train_cmd(cfg, data, run, resume=i > 0), run, aim, rng, timing)
        r["unreadable"], epoch = _check_run(run)
        r["round"], r["last_epoch"], r["went_back"] = i, epoch, epoch < progress
        progress = max(progress, epoch)
        rounds.append(r)
        if r["landed"] == "finished":
            break
    t1 = time.perf_counter()
    final = subprocess.run(_train_cmd(cfg, data, run, True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if final.returncode != 0:
        raise RuntimeError(f"the final resume failed:\n{final.stderr.decode()[-2000:]}")
    killed = [r for r in rounds if r["exit"] == -signal.SIGKILL]
    landed = {k: sum(r["landed"] == k for r in killed) for k in ("before-first-save", "mid-epoch", "mid-write")}
    compare = _same_weights(ref, run)
    return {"target": "train", "config": asdict(cfg), "data": data, **timing,
            "final_resume_s": round(time.perf_counter() - t1, 2),
            "kills": cfg.kills, "killed": len(killed), "landed": landed,
            "aims": {k: sum(r["aim"] == k for r in killed) for k in AIMS},
            "mid_write_files": sorted({f.split(".tmp")[0].lstrip(".").rsplit(".", 1)[0] for r in killed
                                       for f in r["temp_files"]}),
            "unreadable": [u for r in rounds for u in r["unreadable"]],
            "went_back": sum(r["went_back"] for r in rounds), "leftover_temp_files": _temp_files(run),
            "identical": all(c["identical"] and c["history_identical"] for c in compare.values()),
            "compare": compare, "rounds": rounds}


def train_markdown(s: dict, table: bool = True) -> str:
    c, lines = s["compare"], ["# Kill test: training resumed after SIGKILLs", ""]
    lines += [f"- run: {s['config']['model']}, {s['config']['epochs']} epochs, {s['data']}; uninterrupted "
              f"{s['uninterrupted_s']} s",
              f"- kills: {s['killed']} of {s['kills']} (aimed: {s['aims']}); landed: {s['landed']}",
              f"- killed mid-write of: {', '.join(s['mid_write_files']) or 'none'}",
              f"- unreadable checkpoints or run files after a kill: {len(s['unreadable'])}; last.pt going back an "
              f"epoch: {s['went_back']}; temp files left at the end: {len(s['leftover_temp_files'])}",
              *[f"- {name}: epoch {v['epoch'][1] + 1}, {v['tensors']} tensors, {len(v['differ'])} differ from the "
                f"uninterrupted run; history identical: {v['history_identical']}" for name, v in c.items()],
              f"- **bit-identical to the uninterrupted run: {s['identical']}**", ""]
    if not table:
        return "\n".join(lines)
    lines += ["| round | aim | landed | after (s) | last.pt epoch | temp files |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['aim']} | {r['landed']} | {r['after_s']} | {r['last_epoch'] + 1} | "
              f"{', '.join(r['temp_files'])} |" for r in s["rounds"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.kill_test", description=__doc__.split("\n\n")[0])
    p.add_argument("target", nargs="?", choices=("export", "train"), default="export",
                   help="what to kill: `skulens export` runs (default) or a training run and its --resume")
    p.add_argument("--checkpoint", help="export: classifier checkpoint to export (required)")
    p.add_argument("--data", help="export: dataset for calibration and evaluation (default: the checkpoint's); "
                   "train: the dataset (default: a Grocery subset written into --out)")
    p.add_argument("--kills", type=int, default=20, help="runs to kill (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="draws the kill times")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="export: export fp32 only")
    p.add_argument("--out", default="runs/kill_test", help="folder for kill_test.json and the exported files; train: "
                   "also kill_test.md, the subset and the run folders train_reference/ and train_killed/ (replaced)")
    add_dataclass_flags(p, TrainKillConfig, skip=("data", "kills", "seed", "out"))
    args = p.parse_args(argv)
    if args.target == "train":
        summary = kill_train(dataclass_from_args(TrainKillConfig, args))
        write_result_files(args.out, "kill_test", summary, train_markdown(summary), lambda r, path: False)
        print(train_markdown(summary, table=False))
        return 0 if (summary["identical"] and not summary["unreadable"] and not summary["leftover_temp_files"]
                     and not summary["went_back"]) else 1
    if not args.checkpoint:
        p.error("export: --checkpoint is required")
    summary = kill_test(args.checkpoint, args.data, Path(args.out), args.kills, args.seed, args.int8)
    Path(args.out, "kill_test.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=2))
    return 0 if not summary["inconsistent"] and summary["final_state"] == "complete" and not summary["leftover_staging"] else 1


if __name__ == "__main__":
    sys.exit(main())
