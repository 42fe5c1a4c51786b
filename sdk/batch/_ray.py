"""The batch job on Ray Data: the pending shards as a dataset of one-row blocks, mapped by a
fixed pool of actors that each open the model once (``map_batches`` with an ``ActorPoolStrategy``,
one shard per call). Each actor writes its shard's part itself (atomically; the workers see the
input and output paths, as on one machine or a shared filesystem) and returns a few counts, so
the driver holds no results.

A SIGKILLed worker is restarted by Ray and its shard redone (Ray Data's actor pools retry
tasks of dead actors); a killed driver leaves the parts written so far, and a re-run does the
rest. Needs ``pip install 'skulens[ray]'``; skulens must be importable on every worker.
"""
from __future__ import annotations

import logging
import time

import ray
import ray.data

from .config import BatchError, split_cores
from ._work import ShardWorker, WorkerSpec, one_opencv_thread

log = logging.getLogger("skulens.batch")
STATS = ("shard", "n", "errors", "seconds", "pid", "worker", "started", "finished")


class ShardActor:
    """A Ray Data UDF class: one model instance per actor, one shard per call."""

    def __init__(self, spec: WorkerSpec):
        one_opencv_thread()  # the actor's process is its own: its lanes are the parallelism
        self.worker = ShardWorker(spec)

    def __call__(self, batch):
        out = {k: [] for k in STATS}
        for row in batch.to_pylist():
            stats = self.worker.process(row["shard"], row["start"], row["stop"], row["paths"])
            for k in STATS:
                out[k].append(stats[k])
        return out


def connect(address: str) -> bool:
    """Join (``auto``, an address) or start (``local``) a cluster unless this process already
    did; True when this call connected (and the caller shuts it down)."""
    if ray.is_initialized():
        return False
    # log_to_driver off: Ray would copy its workers' and raylet's logs onto this process's stdout,
    # where the summary (--json) goes; they stay in the session's log folder (/tmp/ray/session_latest/logs)
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        if address == "local":
            # a cluster of our own, for this job only: its default token authentication is no news
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BatchError(f"cannot connect to the Ray cluster {address!r}: {str(exc).strip().splitlines()[0]} "
                         "(--ray local starts one on this machine)") from exc
    return True


def run_on_ray(config, spec: dict, pending, plan, bar, work: dict) -> tuple[int, int]:
    """Run the ``pending`` shards on the cluster of ``config.ray``: (workers, threads)."""
    started = connect(config.ray)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            raise BatchError(f"the Ray cluster {config.ray!r} has no CPUs")
        workers, threads = split_cores(cpus, config.workers, config.threads, default_workers=cpus)
        if workers * threads > cpus:
            raise BatchError(f"{workers} workers x {threads} threads need {workers * threads} CPUs; the Ray "
                             f"cluster has {cpus} (lower --workers or --threads)")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts images, not blocks (and says nothing of it)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        rows = [{"shard": s, "start": a, "stop": b, "paths": plan.paths[a:b] if plan.paths is not None else None}
                for s, a, b in pending]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one shard a block: a task each
        # two shards in flight per actor: the next one is queued at the actor when one finishes, so a
        # worker does not sit idle for a scheduling round trip between shards (a dead actor's are retried)
        ds = ds.map_batches(ShardActor, fn_constructor_kwargs={"spec": WorkerSpec(threads=threads, **spec)},
                            batch_size=1, batch_format="pyarrow", num_cpus=threads,
                            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2))
        log.info("classifying %d shards on Ray (%d CPUs): %d worker(s) x %d thread(s)", len(pending), cpus,
                 workers, threads)
        bar.restart_clock()
        t, work["clock"] = time.perf_counter(), time.time()
        try:
            for row in ds.iter_rows():
                bar.update(int(row["n"]), int(row["errors"]))
                work["shards"].append({"n": int(row["n"]), "worker": str(row["worker"]),
                                       "started": float(row["started"]), "finished": float(row["finished"])})
        except Exception as exc:  # Ray wraps a worker's exception in its own types
            first = str(exc).strip().splitlines()
            raise BatchError(f"the Ray job failed ({type(exc).__name__}: {first[-1] if first else ''}); the parts "
                             "written so far are kept: re-run to resume") from exc
        work["seconds"] = time.perf_counter() - t
        return workers, threads
    finally:
        if started:
            ray.shutdown()
