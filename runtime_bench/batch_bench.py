"""Throughput of ``skulens classify-batch`` in-process and on a local Ray cluster, with the checks
that make the numbers mean something (issue #17).

    python -m skulens.bench.batch_bench --model runs/m/lite0.int8.onnx --n 20000 --out runs/batch_bench

Inputs (made in a temp folder, deleted after): the Grocery photos as they are, listed in a
manifest that repeats them up to ``--n`` lines, and ``--hd-copies`` of them re-encoded as
1920x1080 JPEGs (cover-resized, centre-cropped, quality 90), repeated the same way. Every
configuration runs ``--repeats`` times per input set (configurations interleaved round by round,
the median run reported), each in a fresh ``skulens classify-batch`` process:

  inproc   in this process: 1 worker x all cores threads (the SDK's batching, decode threads)
  ray1     --ray local --workers 1: one actor x all cores threads
  ray2     --ray local --workers 2: two actors x cores/2 threads (workers x threads = cores)
  ray1t1   --ray local --workers 1 --threads 1: the scale-out baseline (one actor, one core)
  inproc1c in this process, 1 thread, the whole process pinned to one CPU: with ``inproc`` it
           gives the machine's own 1 -> all-cores scaling for this work, with no Ray in it; the
           ceiling that ray2 / ray1t1 is read against (ray1t1 has the other cores free for Ray's
           own processes and the driver, ray2 does not)

Reported per run: images/s over the work (first worker starting to last part, model loading
included, cluster start-up not: the summary's ``images_per_s``) and over the whole process
(interpreter, imports, cluster start-up included), and the load average around it (the machine
may be shared). Checks: every row of every run equals ``ImageClassifier.classify`` of its image
(labels and scores exactly, each distinct file classified once), and all runs of a set are
identical row for row. ``--kill``: a ray2 run over the first set is SIGKILLed (the driver) once
a third of its parts exist, then re-run to completion; another has one of its Ray workers
SIGKILLed mid-run and must finish on its own; both outputs must equal the uninterrupted run's.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skulens import ClassifierOptions, ImageClassifier

from ._files import write_result_files
from ._session import cpu_seconds, end_session, pin_to, session_procs

log = logging.getLogger(__name__)
CONFIGS = {"inproc": [], "ray1": ["--ray", "local", "--workers", "1"], "ray2": ["--ray", "local", "--workers", "2"],
           "ray1t1": ["--ray", "local", "--workers", "1", "--threads", "1"], "inproc1c": ["--threads", "1"]}
PINNED = {"inproc1c": 1}  # configurations run on this many CPUs (of this process's affinity set)
HD = (1920, 1080)


# -- inputs ----------------------------------------------------------------------------------------
def grocery_photos(root: Path) -> list[str]:
    """The dataset's photos (train/val/test, not the iconic catalogue images), sorted, as absolute
    paths (a manifest's relative paths are read relative to the manifest's own folder)."""
    root = root.resolve()
    photos = sorted(str(p) for split in ("train", "val", "test") for p in (root / split).rglob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no Grocery photos under {root}/{{train,val,test}}")
    return photos


def make_hd_copies(photos: list[str], folder: Path, n: int) -> list[str]:
    """``n`` of ``photos`` (spread over the list) as 1920x1080 JPEGs in ``folder``."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, len(photos) // n)
    out = []
    for i, src in enumerate(photos[::step][:n]):
        im = cv2.imread(src, cv2.IMREAD_COLOR)
        h, w = im.shape[:2]
        s = max(HD[0] / w, HD[1] / h)
        im = cv2.resize(im, (max(HD[0], round(w * s)), max(HD[1], round(h * s))), interpolation=cv2.INTER_CUBIC)
        y, x = (im.shape[0] - HD[1]) // 2, (im.shape[1] - HD[0]) // 2
        dst = folder / f"hd_{i:05d}.jpg"
        cv2.imwrite(str(dst), im[y:y + HD[1], x:x + HD[0]], [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(str(dst))
    return out


def write_manifest(paths: list[str], n: int, dst: Path) -> Path:
    """``paths`` repeated in order up to ``n`` lines."""
    dst.write_text("\n".join(paths[i % len(paths)] for i in range(n)) + "\n")
    return dst


# -- runs ------------------------------------------------------------------------------------------
def _command(model: str, manifest: Path, out: Path, config: str, shard_size: int, batch_size: int) -> list[str]:
    return [sys.executable, "-m", "skulens.cli", "-q", "classify-batch", model, "--input", str(manifest),
            "--output", str(out), "--shard-size", str(shard_size), "--batch-size", str(batch_size),
            "--no-progress", "--json", *CONFIGS[config]]


def run_config(cmd: list[str], log_file: Path, cpus: int | None = None) -> dict:
    """One classify-batch process (on the first ``cpus`` CPUs only, when given): its summary,
    wall time, load averages and the CPU seconds of the job's processes (driver, Ray's,
    workers': sampled every 0.2 s, so a process living less than that may be missed; the
    workers' share is what classified)."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    seen: dict = {}
    with open(log_file, "ab") as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, preexec_fn=pin_to(cpus))
        while proc.poll() is None:
            cpu_seconds(proc.pid, seen)
            time.sleep(0.2)
        out.seek(0)
        stdout = out.read()
    wall = time.perf_counter() - t0
    end_session(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)} (see {log_file})")
    summary = json.loads(stdout)
    if summary["errors"]:  # a throughput of error rows measures nothing
        raise RuntimeError(f"{summary['errors']} of {summary['processed']} images failed in {' '.join(cmd)}; "
                           f"the benchmark's inputs are all valid photos (see {log_file} and the output's error column)")
    cpu = sum(c for _, c in seen.values())
    worker_cpu = sum(c for pid, (name, c) in seen.items()
                     if name.startswith("ray::MapWorker") or (pid == proc.pid and "--ray" not in cmd))
    return {"images_per_s": summary["images_per_s"], "steady_images_per_s": summary["steady_images_per_s"],
            "startup_s": summary["startup_seconds"], "wall_images_per_s": round(summary["processed"] / wall, 2),
            "wall_s": round(wall, 2), "work_s": summary["work_seconds"], "workers": summary["workers"],
            "threads": summary["threads"], "processed": summary["processed"], "errors": summary["errors"],
            "cpu_s": round(cpu, 1), "worker_cpu_s": round(worker_cpu, 1),
            "images_per_cpu_s": round(summary["processed"] / cpu, 1) if cpu else None,
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def _read(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out).sort_by("index").to_pylist()


def check_against_classify(rows: list[dict], model: str) -> dict:
    """Every row vs ``classify`` of its file (each distinct file classified once)."""
    expected = {}
    with ImageClassifier.from_path(model, ClassifierOptions(num_threads=1)) as clf:
        for path in sorted({r["path"] for r in rows}):
            res = clf.classify(path)
            expected[path] = ([c.label for c in res.categories], [c.score for c in res.categories], res.unknown)
    bad = [r["index"] for r in rows if r["error"] is not None
           or (r["labels"], r["scores"], r["unknown"]) != expected[r["path"]]]
    return {"rows": len(rows), "distinct_files": len(expected), "mismatches": len(bad), "first_mismatches": bad[:10]}


def kill_driver(cmd: list[str], out: Path, log_file: Path, fraction: float, parts: int) -> dict:
    """Start ``cmd``, SIGKILL the driver once ``fraction`` of ``parts`` exist, end its session's
    leftovers, re-run it to completion."""
    with open(log_file, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        want = max(1, int(fraction * parts))
        while proc.poll() is None:
            if out.is_dir() and len(list(out.glob("part-*.parquet"))) >= want:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    at_kill = len(list(out.glob("part-*.parquet")))
    time.sleep(2.0)  # a Ray worker busy with a shard may still finish it (atomically) before it notices
    leftovers = end_session(proc.pid)
    before_resume = len(list(out.glob("part-*.parquet")))
    resumed = run_config(cmd, log_file)
    return {"parts_at_kill": at_kill, "parts_before_resume": before_resume, "parts": parts,
            "leftover_processes_ended": leftovers, "resume": resumed}


def kill_worker(cmd: list[str], out: Path, log_file: Path, fraction: float, parts: int) -> dict:
    """Start ``cmd`` and SIGKILL one of its Ray actors (``ray::MapWorker...``) mid-run."""
    t0 = time.perf_counter()
    victim = None
    with open(log_file, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        want = max(1, int(fraction * parts))
        while proc.poll() is None and victim is None:
            if out.is_dir() and len(list(out.glob("part-*.parquet"))) >= want:
                actors = [pid for pid, comm in session_procs(proc.pid) if comm.startswith("ray::MapWorker")]
                if actors:
                    victim = actors[0]
                    os.kill(victim, signal.SIGKILL)
            time.sleep(0.05)
        at_kill = len(list(out.glob("part-*.parquet")))
        stdout, _ = proc.communicate()
    end_session(proc.pid)
    return {"killed_worker_pid": victim, "parts_at_kill": at_kill, "parts": parts, "driver_exit": proc.returncode,
            "wall_s": round(time.perf_counter() - t0, 2),
            "summary": {k: v for k, v in json.loads(stdout).items() if k in ("total", "processed", "errors")}
            if proc.returncode == 0 else None}


def run(model: str, grocery: Path, n: int, out_dir: Path, sets=("original", "1080p"), configs=tuple(CONFIGS),
        hd_copies: int = 1000, hd_n: int | None = None, shard_size: int = 250, batch_size: int = 32,
        kill: bool = True, keep: bool = False, save=None, repeats: int = 1) -> dict:
    """The benchmark (see the module docstring); ``save(result)`` is called after each set, so an
    interrupted run keeps what it measured."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="batch_bench_"))
    log_file = out_dir / "batch_bench.log"
    result = {"model": model, "n": n, "shard_size": shard_size, "batch_size": batch_size, "repeats": repeats,
              "cores": os.cpu_count(),
              "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
              "sets": {}, "kill": None}
    try:
        photos = grocery_photos(grocery)
        for name in sets:
            t = time.perf_counter()
            if name == "original":
                files, count = photos, n
            else:
                files, count = make_hd_copies(photos, work / "hd", hd_copies), hd_n or n
            manifest = write_manifest(files, count, work / f"{name}.txt")
            entry = {"images": count, "distinct_files": len(set(files[:count])), "runs": {},
                     "prepare_s": round(time.perf_counter() - t, 1)}
            outputs, runs, first, identical = {}, {c: [] for c in configs}, None, True
            for r in range(repeats):  # configurations interleaved round by round: drift hits them all alike
                for config in configs:
                    out = work / f"{name}-{config}-{r}"
                    log.info("%s / %s (round %d of %d): %d images", name, config, r + 1, repeats, count)
                    runs[config].append(run_config(_command(model, manifest, out, config, shard_size, batch_size),
                                                   log_file, PINNED.get(config)))
                    log.info("  %s", runs[config][-1])
                    rows = _read(out)
                    first = rows if first is None else first
                    identical = identical and rows == first
                    if r == 0:
                        outputs[config] = out
                    elif not keep:
                        shutil.rmtree(out, ignore_errors=True)
            entry["runs"] = {c: _median_run(runs[c]) for c in configs}
            entry["identical_across_runs"] = identical
            entry["vs_classify"] = check_against_classify(first, model)
            entry["ratios"] = _ratios(entry["runs"])
            entry["steady_ratios"] = _ratios(entry["runs"], "steady_images_per_s")
            result["sets"][name] = entry
            if kill and name == sets[0] and "ray2" in outputs:
                parts = -(-count // shard_size)
                killed, wkilled = work / f"{name}-killed-driver", work / f"{name}-killed-worker"
                res = {"driver": kill_driver(_command(model, manifest, killed, "ray2", shard_size, batch_size), killed,
                                             log_file, 1 / 3, parts),
                       "worker": kill_worker(_command(model, manifest, wkilled, "ray2", shard_size, batch_size),
                                             wkilled, log_file, 1 / 3, parts)}
                ref = _read(outputs["ray2"])
                res["driver"]["equal_to_uninterrupted"] = _read(killed) == ref
                res["worker"]["equal_to_uninterrupted"] = (res["worker"]["driver_exit"] == 0 and _read(wkilled) == ref)
                result["kill"] = res
                log.info("kill test: %s", res)
            if save is not None:
                save(result)
            if not keep:
                for out in outputs.values():
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            result["work_dir"] = str(work)
    return result


def _median_run(runs: list[dict]) -> dict:
    """The run with the median work img/s (the lower middle one for an even count), its steady
    img/s replaced by the median of the runs' steady rates; every run's rates are kept."""
    def median(values):
        return sorted(values)[(len(values) - 1) // 2]

    by_work = sorted(runs, key=lambda r: r["images_per_s"])
    return {**by_work[(len(runs) - 1) // 2], "steady_images_per_s": median([r["steady_images_per_s"] for r in runs]),
            "repeats": len(runs), "all_images_per_s": [r["images_per_s"] for r in runs],
            "all_steady_images_per_s": [r["steady_images_per_s"] for r in runs]}


def _ratios(runs: dict, key: str = "images_per_s") -> dict:
    def r(a, b):
        return round(runs[a][key] / runs[b][key], 3) if a in runs and b in runs and runs[b][key] else None

    out = {"ray2_over_ray1": r("ray2", "ray1"), "ray2_over_ray1t1": r("ray2", "ray1t1"),
           "inproc_over_ray1": r("inproc", "ray1"), "hardware_scaling": r("inproc", "inproc1c")}
    # Ray's scale-out as a fraction of what the machine itself gives going from one core to all
    out["ray_scaling_efficiency"] = (round(out["ray2_over_ray1t1"] / out["hardware_scaling"], 3)
                                     if out["ray2_over_ray1t1"] and out["hardware_scaling"] else None)
    return out


def markdown(result: dict) -> str:
    lines = [f"# classify-batch throughput: {Path(result['model']).name}", "",
             f"{result['affinity']} cores; shards of {result['shard_size']}, batches of {result['batch_size']}; "
             f"{result.get('repeats', 1)} run(s) per configuration, interleaved round by round, each a fresh "
             "process; the median run is shown (all runs' rates in the JSON). img/s (work) excludes interpreter and cluster "
             "start-up, not the workers' (start-up s: until the first shard starts); img/s (steady): once every "
             "worker is busy; img/s (wall) includes everything. CPU s: all of the job's processes (Ray's own "
             "included), in brackets the classifying ones (the driver in-process, the actors on Ray).", ""]
    for name, entry in result["sets"].items():
        lines += [f"## {name}: {entry['images']} images ({entry['distinct_files']} distinct files)", "",
                  "| config | workers x threads | img/s (work) | start-up s | img/s (steady) | img/s (wall) | wall s | "
                  "CPU s (workers) | img per CPU s | load before/after |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for config, run_ in entry["runs"].items():
            lines.append(f"| {config} | {run_['workers']} x {run_['threads']} | {run_['images_per_s']:.1f} | "
                         f"{run_.get('startup_s', 0.0):.2f} | {run_.get('steady_images_per_s', 0.0):.1f} | "
                         f"{run_['wall_images_per_s']:.1f} | {run_['wall_s']:.1f} | {run_['cpu_s']} "
                         f"({run_['worker_cpu_s']}) | {run_['images_per_cpu_s']} | {run_['load_before']} / "
                         f"{run_['load_after']} |")
        lines.append("")
        for what, ratios in (("work", entry["ratios"]), ("steady", entry.get("steady_ratios"))):
            if ratios:
                lines.append(f"{what}: ray2 / ray1 (same cores): {ratios['ray2_over_ray1']}; ray2 / ray1t1 (scale-out): "
                             f"{ratios['ray2_over_ray1t1']}; inproc / ray1: {ratios['inproc_over_ray1']}; "
                             f"inproc / inproc1c (the machine's own scaling, no Ray): {ratios.get('hardware_scaling')}; "
                             f"Ray's scale-out / the machine's: {ratios.get('ray_scaling_efficiency')}  ")
        lines += [f"Rows identical across runs: {entry['identical_across_runs']}; vs classify: "
                  f"{entry['vs_classify']['mismatches']} mismatches in {entry['vs_classify']['rows']} rows "
                  f"({entry['vs_classify']['distinct_files']} distinct files classified).", ""]
    if result.get("kill"):
        d, w = result["kill"]["driver"], result["kill"]["worker"]
        lines += ["## kill test (ray2)", "",
                  f"- driver SIGKILLed with {d['parts_at_kill']}/{d['parts']} parts ({d['parts_before_resume']} "
                  f"before the resume; {d['leftover_processes_ended']} leftover Ray processes ended); resumed: "
                  f"{d['resume']['processed']} images; output equal to the uninterrupted run: "
                  f"{d['equal_to_uninterrupted']}",
                  f"- worker pid {w['killed_worker_pid']} SIGKILLed with {w['parts_at_kill']}/{w['parts']} parts; "
                  f"driver exit {w['driver_exit']}; output equal to the uninterrupted run: "
                  f"{w['equal_to_uninterrupted']}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.batch_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an exported classifier .onnx")
    p.add_argument("--grocery", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" /
                                         "grocery-store" / "dataset"), help="the Grocery Store dataset folder")
    p.add_argument("--n", type=int, default=20000, help="images per input set (the photos repeated)")
    p.add_argument("--hd-n", type=int, default=None, help="images of the 1080p set (default: --n)")
    p.add_argument("--hd-copies", type=int, default=1000, help="distinct 1080p files made (repeated to --hd-n)")
    p.add_argument("--sets", default="original,1080p", help="comma-separated: original, 1080p")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated among {', '.join(CONFIGS)}")
    p.add_argument("--shard-size", type=int, default=250, help="images per part")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call")
    p.add_argument("--repeats", type=int, default=1, help="runs per configuration, interleaved round by round; "
                                                            "the tables show the median")
    p.add_argument("--no-kill", dest="kill", action="store_false", help="skip the SIGKILL tests")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (inputs and outputs)")
    p.add_argument("--out", default="runs/batch_bench", help="folder for batch_bench.json/.md and the log")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    configs = tuple(c for c in args.configs.split(",") if c)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose among {list(CONFIGS)}")
    def save(result):
        write_result_files(args.out, "batch_bench", result, markdown(result), lambda r, path: False)

    result = run(args.model, Path(args.grocery), args.n, Path(args.out), tuple(args.sets.split(",")), configs,
                 args.hd_copies, args.hd_n, args.shard_size, args.batch_size, args.kill, args.keep, save,
                 repeats=max(1, args.repeats))
    save(result)
    print(markdown(result))
    ok = all(e["identical_across_runs"] and e["vs_classify"]["mismatches"] == 0 for e in result["sets"].values())
    if result["kill"]:
        ok = ok and all(result["kill"][k]["equal_to_uninterrupted"] for k in ("driver", "worker"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
