"""Job options of ``skulens classify-batch`` (free of pyarrow and Ray, so the CLI builds its
flags and a config is checked without the extras)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .._config import option
from .._errors import SkulensError

DEFAULT_SHARD_SIZE = 1000


class BatchError(SkulensError, ValueError):
    """A batch job cannot run: an unreadable input list, an output folder of another job, a
    second job on the same output folder, a failed cluster."""


@dataclass(frozen=True)
class BatchConfig:
    """One catalogue-scale classification job; each field is a ``skulens classify-batch`` flag.

    The sorted input list is cut into shards of ``shard_size`` images; each shard becomes one
    Parquet part of ``output``, written atomically, so a re-run with the same ``output`` does
    exactly the shards whose part is missing (after a crash or SIGKILL too).
    """

    model: str = option(help="the exported classifier .onnx (fp32 or INT8); Ray workers read it from the "
                        "same path")
    input: str = option(help="the images: a folder (searched recursively, sorted), a text manifest (one "
                        "path per line, or a split list's 'path, label' lines), a CSV with a path column, "
                        "or a Parquet file with a path or an image-bytes column; relative paths are read "
                        "from the manifest's folder")
    output: str = option(help="the results: a folder of Parquet parts (part-NNNNNN.parquet, one per shard) "
                         "with _job.json and _summary.json; re-running with the same folder resumes")
    ray: str | None = option(None, "run on Ray Data (pip install 'skulens[ray]'): 'auto' = the running "
                             "cluster, 'local' = start one on this machine, or a cluster address such as "
                             "ray://head:10001; unset: in this process")
    workers: int = option(0, "model copies working in parallel, each opening the model once (Ray actors, "
                          "or threads in this process); 0 = one in-process, one per CPU on Ray")
    threads: int = option(0, "threads per worker: parallel lanes that each decode a batch and run it "
                          "(onnxruntime one thread a call); 0 = CPUs / workers, so workers x threads = the cores")
    batch_size: int = option(32, "images per model call")
    shard_size: int = option(DEFAULT_SHARD_SIZE, "images per output part: the unit of work, of atomic "
                             "writing and of resuming (fixed for an output folder)")
    top_k: int = option(5, "labels and scores kept per image")
    gallery: str | None = option(None, "a product gallery file (skulens gallery create): classify by "
                                 "retrieval among its products (scores are cosine similarities)")
    embeddings: bool = option(False, "also store each image's L2-normalised embedding (list<float32> "
                              "column 'embedding')")
    path_column: str | None = option(None, "CSV or Parquet input: the column of image paths; unset: "
                                     "'path', 'image_path', 'file', 'filename' or 'image', whichever exists")
    bytes_column: str | None = option(None, "Parquet input: the column of encoded image bytes; unset: "
                                      "the only binary column, if there is one")
    progress: bool = option(True, "a progress bar with images/s on stderr (a log line every 30 s when "
                            "stderr is not a terminal)")

    def __post_init__(self):
        problems = []
        for name in ("batch_size", "shard_size", "top_k"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (0 = automatic), got {getattr(self, name)}")
        for name in ("model", "input", "output"):
            if not isinstance(getattr(self, name), (str, os.PathLike)) or not os.fspath(getattr(self, name)):
                problems.append(f"{name} must be a non-empty path")
        if self.ray is not None and not str(self.ray).strip():
            problems.append("ray must be 'auto', 'local' or a cluster address")
        if problems:
            raise ValueError("invalid BatchConfig: " + "; ".join(problems))


def cpu_count() -> int:
    """The cores this process may use (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def split_cores(cores: int, workers: int, threads: int, *, default_workers: int) -> tuple[int, int]:
    """(workers, threads per worker): what is 0 is chosen so that workers x threads = cores."""
    if workers <= 0:
        workers = max(1, cores // threads) if threads > 0 else max(1, min(default_workers, cores))
    if threads <= 0:
        threads = max(1, cores // workers)
    return workers, threads
