"""``run_batch(BatchConfig)``: classify a catalogue into a Parquet dataset, resumably.

The output folder is the job's whole state:

- ``_job.json``: what the job is (input fingerprint and size, shard size, model and gallery
  sha256, top-k, columns), written once; a re-run with other settings or a changed input is
  refused (BatchError) instead of mixing two jobs' rows;
- ``part-NNNNNN.parquet``: shard ``N`` = items ``[N * shard_size, (N + 1) * shard_size)`` of the
  input list, written atomically (temp file, fsync, rename) by whichever worker did it; a shard
  is done exactly when its part exists, so a re-run after any crash (the driver or a worker
  SIGKILLed) does the missing shards only: no duplicates, no gaps;
- ``_summary.json``: counts, errors and the top-1 label histogram, rewritten at the end of
  every run from all the parts (each part's row count and ``index`` range are checked).

Files starting with ``_`` or ``.`` are skipped by Parquet readers, so ``pyarrow.parquet.read_table(OUT)``
(or pandas, DuckDB, Spark, Ray Data) reads the results as one table. One job writes to a folder
at a time (an advisory lock on ``OUT/.lock``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._classifier import ClassifierOptions, ImageClassifier
from .._errors import ModelError, require_extra
from .._io import atomic_write_text, sha256_file
from .._version import __version__
from ._inputs import InputPlan, plan_input
from ._progress import Progress
from ._work import PART_PREFIX, PART_SUFFIX, ShardWorker, WorkerSpec, one_opencv_thread, part_name, result_schema
from .config import BatchConfig, BatchError, cpu_count, split_cores

log = logging.getLogger("skulens.batch")
FORMAT, VERSION = "skulens-batch", 2  # 2: the coarse_label and coarse_score columns
JOB_FILE, SUMMARY_FILE, LOCK_FILE = "_job.json", "_summary.json", ".lock"
# the keys of _job.json that must match for a re-run to resume (paths may move, settings may not)
_IDENTITY = ("format", "version", "input.kind", "input.count", "input.fingerprint", "input.bytes_column",
             "shard_size", "model.sha256", "gallery.sha256", "top_k", "embeddings", "columns")
MAX_ERROR_EXAMPLES = 5


@dataclass(frozen=True)
class BatchSummary:
    """The outcome of :func:`run_batch`, over all of the output's parts (``skipped``: images an
    earlier run had done). ``images_per_s`` = ``processed`` / ``work_seconds`` (from the first
    worker starting, model loading included, to the last part; a Ray cluster's start-up is not
    in it, but is in ``seconds``). ``startup_seconds``: from then to the first shard starting
    (workers starting, models opening); ``steady_images_per_s``: the rate once every worker is
    busy (:func:`steady_state`), what a catalogue of millions runs at."""

    output: str
    mode: str
    workers: int
    threads: int
    total: int
    shards: int
    skipped: int
    processed: int
    errors: int
    unknown: int
    labels: dict = field(default_factory=dict)
    error_examples: list = field(default_factory=list)
    seconds: float = 0.0
    work_seconds: float = 0.0
    images_per_s: float = 0.0
    startup_seconds: float = 0.0
    steady_images_per_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, top: int = 10) -> str:
        lines = [f"{self.total} images in {self.shards} parts -> {self.output}",
                 f"  this run: {self.processed} images in {self.seconds:.1f} s ({self.images_per_s:.1f} img/s, "
                 f"{self.mode}, {self.workers} worker(s) x {self.threads} thread(s)); {self.skipped} done before",
                 f"  errors: {self.errors}   unknown: {self.unknown}"]
        if self.processed:
            lines.insert(2, f"  workers' start-up {self.startup_seconds:.1f} s, then {self.steady_images_per_s:.1f} img/s "
                            "with every worker busy")
        for ex in self.error_examples:
            name = ex["path"] if ex["path"] is not None else f"#{ex['index']}"
            error = ex["error"] if ex["error"].startswith(str(ex["path"])) else f"{name}: {ex['error']}"
            lines.append(f"    {error}")
        if self.labels:
            lines.append(f"  top-1 labels ({len(self.labels)} distinct):")
            width = max(len(k) for k in list(self.labels)[:top])
            for label, n in list(self.labels.items())[:top]:
                lines.append(f"    {label:<{width}}  {n}")
            if len(self.labels) > top:
                lines.append(f"    ... {len(self.labels) - top} more")
        return "\n".join(lines)


def run_batch(config: BatchConfig, *, progress: Progress | None = None) -> BatchSummary:
    """Classify every image of ``config.input`` into the Parquet dataset ``config.output``,
    skipping the shards an earlier run finished. Bad images become rows with ``error`` set;
    the job itself fails only for what no image causes (a model, input, output or cluster
    problem), and a re-run then resumes it."""
    t0 = time.perf_counter()
    out = Path(config.output)
    model_sha, gallery_sha, with_embedding = _probe_model(config)
    plan = plan_input(config.input, path_column=config.path_column, bytes_column=config.bytes_column)
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: exists and is not a folder; the output is a folder of Parquet parts")
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        record = _job_record(config, plan, model_sha, gallery_sha)
        _check_or_write_job(out, record)
        shards = make_shards(plan.count, config.shard_size)
        pending = [s for s in shards if not (out / part_name(s[0])).exists()]
        skipped = sum(b - a for _, a, b in shards) - sum(b - a for _, a, b in pending)
        if skipped:
            log.info("%s: %d of %d parts done already; %d images to go", out, len(shards) - len(pending),
                     len(shards), plan.count - skipped)
        bar = progress or Progress(plan.count, skipped, enabled=config.progress)
        spec = dict(model=str(Path(config.model).resolve()), output=str(out.resolve()), base=plan.base,
                    batch_size=config.batch_size, top_k=config.top_k,
                    gallery=str(Path(config.gallery).resolve()) if config.gallery else None,
                    embeddings=with_embedding,
                    parquet=plan.source if plan.kind == "parquet-bytes" else None, bytes_column=plan.bytes_column)
        work = {"seconds": 0.0, "clock": None, "shards": []}
        try:
            if not pending:  # nothing to do: no cluster to start
                mode, workers, threads = ("ray" if config.ray else "in-process"), config.workers, config.threads
            elif config.ray:
                mode = "ray"
                ray_mod = require_extra("skulens.batch._ray", "ray", deps=("ray", "pandas"))
                workers, threads = ray_mod.run_on_ray(config, spec, pending, plan, bar, work)
            else:
                mode = "in-process"
                workers, threads = split_cores(cpu_count(), config.workers, config.threads, default_workers=1)
                _run_in_process(WorkerSpec(threads=threads, **spec), pending, plan, workers, bar, work)
        finally:
            bar.close()
        summary = summarize(out, shards, mode=mode, workers=workers, threads=threads, skipped=skipped,
                            seconds=time.perf_counter() - t0, work_seconds=work["seconds"],
                            timing=steady_state(work["shards"], work["clock"]))
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2) + "\n")
        _remove_stale_temps(out)
    log.info("%s: %d images, %d errors, %.1f img/s", out, summary.total, summary.errors, summary.images_per_s)
    return summary


def make_shards(count: int, shard_size: int) -> list[tuple[int, int, int]]:
    """(shard, start, stop) covering ``range(count)`` in order."""
    return [(s, a, min(count, a + shard_size)) for s, a in enumerate(range(0, count, shard_size))]


def steady_state(shards: list[dict], clock: float | None) -> tuple[float, float]:
    """(start-up seconds, steady images/s) from the shards' stats ({"n", "worker", "started",
    "finished"}, ``time.time()`` values) of a run whose clock started at ``clock``.

    Start-up is the clock start to the first shard starting. The steady state begins when the
    last worker starts its first shard; it counts the images of the shards started from then on
    over the time to the last shard's end. Shards already running at that moment are left out
    (their images and their time before it), so the rate is, if anything, an underestimate."""
    if not shards or clock is None:
        return 0.0, 0.0
    first = {}
    for s in shards:
        first[s["worker"]] = min(first.get(s["worker"], s["started"]), s["started"])
    ready = max(first.values())
    end = max(s["finished"] for s in shards)
    images = sum(s["n"] for s in shards if s["started"] >= ready)
    startup = max(0.0, min(first.values()) - clock)
    return round(startup, 3), round(images / (end - ready), 2) if end > ready else 0.0


def _probe_model(config: BatchConfig):
    """Open the model once in the driver: its problems show before any work, and its identity
    (and the gallery's) goes into _job.json."""
    clf = ImageClassifier.from_path(config.model, ClassifierOptions(num_threads=1, top_k=config.top_k,
                                                                    gallery=config.gallery))
    with clf:
        if config.embeddings and clf.embedding_spec is None:
            raise ModelError(f"{config.model}: this model has no embedding output; drop --embeddings or "
                             "re-export it with a current skulens")
        return clf.model_sha256, sha256_file(config.gallery) if config.gallery else None, bool(config.embeddings)


def _job_record(config: BatchConfig, plan: InputPlan, model_sha: str, gallery_sha: str | None) -> dict:
    return {"format": FORMAT, "version": VERSION, "skulens": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "input": plan.describe(), "shard_size": config.shard_size,
            "shards": len(make_shards(plan.count, config.shard_size)),
            "model": {"path": str(Path(config.model).resolve()), "sha256": model_sha},
            "gallery": {"path": str(Path(config.gallery).resolve()), "sha256": gallery_sha} if config.gallery else None,
            "top_k": config.top_k, "embeddings": bool(config.embeddings),
            "columns": result_schema(config.embeddings).names}


def _get(record: dict, dotted: str):
    value = record
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _check_or_write_job(out: Path, record: dict) -> None:
    job_file = out / JOB_FILE
    if job_file.exists():
        try:
            old = json.loads(job_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BatchError(f"{job_file}: unreadable ({exc}); this folder cannot be resumed, choose another "
                             "--output") from exc
        diff = [k for k in _IDENTITY if _get(old, k) != _get(record, k)]
        if diff:
            what = ", ".join(f"{k} ({_get(old, k)!r} -> {_get(record, k)!r})" if "fingerprint" not in k and
                             "sha256" not in k else f"{k} (changed)" for k in diff)
            raise BatchError(f"{out} holds the results of another job: {what}. Resume with the same input, model "
                             "and settings, or choose another --output")
        return
    strays = [p.name for p in out.iterdir() if not p.name.startswith((".", "_"))]
    if strays:
        raise BatchError(f"{out}: not empty and not a classify-batch output (holds {', '.join(sorted(strays)[:3])}"
                         f"{', ...' if len(strays) > 3 else ''}); choose an empty or new --output")
    atomic_write_text(job_file, json.dumps(record, indent=2) + "\n")


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an advisory lock on ``out/.lock`` (released by the OS if this process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock
        yield
        return
    with open(out / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BatchError(f"{out}: another classify-batch job is writing to this folder") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run_in_process(spec: WorkerSpec, pending, plan: InputPlan, workers: int, bar: Progress, work: dict) -> None:
    """``workers`` threads, each with its own ShardWorker (model instance), take shards in order."""
    local, made, made_lock, stop = threading.local(), [], threading.Lock(), threading.Event()

    def do(shard):
        if stop.is_set():
            return None
        worker = getattr(local, "worker", None)
        if worker is None:
            worker = local.worker = ShardWorker(spec)
            with made_lock:
                made.append(worker)
        s, a, b = shard
        stats = worker.process(s, a, b, plan.paths[a:b] if plan.paths is not None else None, on_batch=bar.update,
                              cancelled=stop.is_set)
        work["shards"].append({k: stats[k] for k in ("n", "worker", "started", "finished")})  # list.append: atomic
        return stats

    log.info("classifying %d shards in this process: %d worker(s) x %d thread(s)", len(pending), workers, spec.threads)
    bar.restart_clock()
    t, work["clock"] = time.perf_counter(), time.time()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="skulens-batch")
    cv_threads = one_opencv_thread()
    try:
        futures = [pool.submit(do, s) for s in pending]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            f.result()  # the first failure, if any, propagates
    finally:
        stop.set()  # after a failure or Ctrl-C, the other shards stop at their next batch (no part written)
        pool.shutdown(wait=True, cancel_futures=True)
        for worker in made:
            worker.close()
        cv2.setNumThreads(cv_threads)
    work["seconds"] = time.perf_counter() - t


def summarize(out, shards, *, mode: str = "", workers: int = 0, threads: int = 0, skipped: int = 0,
              seconds: float = 0.0, work_seconds: float = 0.0, timing=(0.0, 0.0)) -> BatchSummary:
    """Counts over every part, checking that part ``s`` holds exactly items ``[start, stop)``;
    ``timing`` is this run's (start-up seconds, steady images/s) from :func:`steady_state`."""
    out = Path(out)
    total = errors = unknown = 0
    labels, examples = Counter(), []
    for s, a, b in shards:
        path = out / part_name(s)
        if not path.exists():
            raise BatchError(f"{path}: missing after the run; re-run to finish the job")
        try:
            table = pq.read_table(path, columns=["index", "label", "unknown", "error"])
        except (OSError, pa.ArrowException) as exc:
            raise BatchError(f"{path}: unreadable part ({exc}); delete it and re-run to redo the shard") from exc
        index = table.column("index").to_numpy()
        if len(index) != b - a or (len(index) and (index[0] != a or index[-1] != b - 1 or
                                                   (len(index) > 1 and not (index[1:] - index[:-1] == 1).all()))):
            raise BatchError(f"{path}: holds {len(index)} rows that are not items {a}..{b - 1} of the input; "
                             "delete it and re-run to redo the shard")
        total += len(index)
        err = table.column("error")
        n_err = len(err) - err.null_count
        errors += n_err
        unknown += int(pc.sum(table.column("unknown")).as_py() or 0)
        vc = pc.value_counts(table.column("label").drop_null())
        labels.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
        if n_err and len(examples) < MAX_ERROR_EXAMPLES:
            rows = pq.read_table(path, columns=["index", "path", "error"]).filter(pc.is_valid(pc.field("error")))
            examples += rows.slice(0, MAX_ERROR_EXAMPLES - len(examples)).to_pylist()
    processed = total - skipped
    return BatchSummary(output=str(out), mode=mode, workers=workers, threads=threads, total=total,
                        shards=len(shards), skipped=skipped, processed=processed, errors=errors, unknown=unknown,
                        labels=dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
                        error_examples=examples, seconds=round(seconds, 3), work_seconds=round(work_seconds, 3),
                        images_per_s=round(processed / work_seconds, 2) if work_seconds > 0 else 0.0,
                        startup_seconds=timing[0], steady_images_per_s=timing[1])


def _remove_stale_temps(out: Path) -> None:
    """Temp files of parts whose writer was killed: once every part exists, nothing of this job
    writes one any more (a worker of an earlier, killed driver still writing a part of the same
    shard fails its rename, harmlessly: the part is there)."""
    for p in out.glob(f".{PART_PREFIX}*{PART_SUFFIX}.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            log.debug("removed %s (left by a killed writer)", p)
