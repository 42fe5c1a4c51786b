"""One worker of a batch job: opens the model once, classifies whole shards and writes each as
one Parquet part, atomically (the part is complete or absent).

The same class runs in this process (one per worker thread) and inside a Ray actor, so the two
modes give the same rows. Each image is decoded and preprocessed on its own (a bad one becomes a
row with ``error`` set), the good ones go to the model in batches of ``batch_size`` and come
back through :meth:`ImageClassifier.postprocess`: the labels and scores of
:meth:`ImageClassifier.classify`.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._classifier import ClassifierOptions, ImageClassifier
from .._errors import ImageError
from .._io import atomic_write

log = logging.getLogger(__name__)
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"


def part_name(shard: int) -> str:
    return f"{PART_PREFIX}{shard:06d}{PART_SUFFIX}"


def result_schema(with_embedding: bool) -> pa.Schema:
    """The columns of every part. Error rows have ``error`` set, ``label``/``score``/``unknown``
    null and empty lists; ``label``/``score`` repeat the top category (null when none passed);
    ``coarse_label``/``coarse_score``: the answer's coarse group and the group's total probability
    (:attr:`ClassificationResult.coarse`; null for a model without coarse labels or a gallery)."""
    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("path", pa.string()),
              pa.field("label", pa.string()), pa.field("score", pa.float64()),
              pa.field("coarse_label", pa.string()), pa.field("coarse_score", pa.float64()),
              pa.field("labels", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float64())),
              pa.field("indices", pa.list_(pa.int32())), pa.field("unknown", pa.bool_()),
              pa.field("error", pa.string())]
    if with_embedding:
        fields.append(pa.field("embedding", pa.list_(pa.float32())))
    return pa.schema(fields)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs (plain data: it travels to Ray actors)."""

    model: str
    output: str
    base: str
    threads: int
    batch_size: int
    top_k: int
    gallery: str | None = None
    embeddings: bool = False
    parquet: str | None = None        # a bytes input: the Parquet file ...
    bytes_column: str | None = None   # ... and its column of encoded images


class Cancelled(Exception):
    """The job is stopping (Ctrl-C, another shard failed): this shard's part is not written."""


def one_opencv_thread() -> int:
    """Make OpenCV's own operations single-threaded, returning its former thread count: the
    lanes and workers already fill the cores, and OpenCV's parallel resize and colour conversion
    inside each of them only add contention (measured on 1080p JPEGs: 16 CPU-ms per image in
    this process against 11.5 in a Ray actor, where Ray limits threads to the actor's CPUs)."""
    former = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return former


class ShardWorker:
    """Classifies shards with one model instance in ``spec.threads`` lanes: each lane decodes one
    batch of images and runs it through the model, the lanes in parallel on the shared session
    (onnxruntime runs each call on its calling thread, one thread a call: no idle thread spins
    and steals a core from decoding, which is most of the work)."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.clf = ImageClassifier.from_path(spec.model, ClassifierOptions(
            num_threads=1, top_k=spec.top_k, gallery=spec.gallery, max_batch=spec.batch_size))
        self.schema = result_schema(spec.embeddings)
        self._pool = ThreadPoolExecutor(spec.threads, thread_name_prefix="skulens-lane") if spec.threads > 1 else None
        self._parquet = None
        if spec.embeddings and self.clf.embedding_spec is None:
            from .._errors import ModelError

            raise ModelError(f"{spec.model}: this model has no embedding output; drop --embeddings or "
                             "re-export it with a current skulens")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.clf.close()

    # -- one shard -----------------------------------------------------------------------------
    def process(self, shard: int, start: int, stop: int, paths=None, on_batch=None, cancelled=None) -> dict:
        """Classify items ``[start, stop)`` (their ``paths``, or rows of the bytes input) and write
        part ``shard``. ``on_batch(images, errors)`` is called after every model batch;
        ``cancelled()`` true makes it stop (raising :class:`Cancelled`) before the next batch.
        Returns {"shard", "n", "errors", "seconds", "pid", "worker", "started", "finished"}
        (``worker`` names this instance; the last two are ``time.time()``: comparable across the processes of one machine)."""
        started, t0 = time.time(), time.perf_counter()
        n = stop - start
        if paths is not None and len(paths) != n:
            raise ValueError(f"shard {shard}: {len(paths)} paths for {n} items")
        sources = self._sources(start, stop, paths)
        cols = {name: [None] * n for name in self.schema.names}
        cols["index"] = list(range(start, stop))
        cols["path"] = list(paths) if paths is not None else [None] * n
        for name in ("labels", "scores", "indices"):
            cols[name] = [[] for _ in range(n)]

        def batch(lo: int):
            if cancelled is not None and cancelled():
                raise Cancelled(f"shard {shard}")
            prepared = [self._prepare(s) for s in sources[lo:lo + self.spec.batch_size]]
            ok = [i for i, (x, _) in enumerate(prepared) if x is not None]
            if not ok:
                return lo, prepared, ok, [], None
            outputs, embeddings = self._infer(np.stack([prepared[i][0] for i in ok]))
            return lo, prepared, ok, self.clf.postprocess(outputs), embeddings

        starts = range(0, n, self.spec.batch_size)
        errors = 0
        done = self._pool.map(batch, starts) if self._pool else map(batch, starts)  # in order
        for lo, prepared, ok, results, embeddings in done:
            batch_errors = 0
            for i, (_, err) in enumerate(prepared):
                if err is not None:
                    cols["error"][lo + i] = err
                    batch_errors += 1
            for j, (i, res) in enumerate(zip(ok, results)):
                row = lo + i
                cols["labels"][row] = [c.label for c in res.categories]
                cols["scores"][row] = [c.score for c in res.categories]
                cols["indices"][row] = [c.index for c in res.categories]
                cols["label"][row] = res.top.label if res.top else None
                cols["score"][row] = res.top.score if res.top else None
                cols["unknown"][row] = bool(res.unknown)
                if res.coarse is not None:
                    cols["coarse_label"][row], cols["coarse_score"][row] = res.coarse.label, res.coarse.score
                if embeddings is not None:
                    cols["embedding"][row] = embeddings[j]
            errors += batch_errors
            if on_batch is not None:
                on_batch(len(prepared), batch_errors)
        if "embedding" in cols:
            cols["embedding"] = pa.array([None if e is None else np.asarray(e, np.float32) for e in cols["embedding"]],
                                         type=pa.list_(pa.float32()))
        table = pa.table({name: cols[name] for name in self.schema.names}, schema=self.schema)
        atomic_write(Path(self.spec.output) / part_name(shard), lambda tmp: pq.write_table(table, tmp))
        return {"shard": shard, "n": n, "errors": errors, "seconds": time.perf_counter() - t0, "pid": os.getpid(),
                "worker": f"{os.getpid()}.{id(self):x}", "started": started, "finished": time.time()}

    def _sources(self, start: int, stop: int, paths) -> list:
        if self.spec.parquet is None:
            return [os.path.join(self.spec.base, p) for p in paths]
        return self._read_bytes(start, stop)

    def _read_bytes(self, start: int, stop: int) -> list:
        """Rows ``[start, stop)`` of the bytes column (only the row groups holding them are read)."""
        if self._parquet is None:
            pf = pq.ParquetFile(self.spec.parquet)
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
            self._parquet = (pf, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        pf, offsets = self._parquet
        groups = [g for g in range(len(offsets) - 1) if offsets[g] < stop and offsets[g + 1] > start]
        table = pf.read_row_groups(groups, columns=[self.spec.bytes_column])
        first = int(offsets[groups[0]])
        return table.column(0).slice(start - first, stop - start).to_pylist()

    def _prepare(self, source):
        """(tensor, None) or (None, error message): a bad image never fails the shard."""
        if source is None:
            return None, "no image bytes (null value)"
        try:
            return self.clf.preprocess(source), None
        except ImageError as exc:
            return None, str(exc)
        except Exception as exc:  # an unforeseen decoder failure is still this image's problem
            log.debug("unexpected error decoding an image", exc_info=True)
            return None, f"{type(exc).__name__}: {exc}"

    def _infer(self, batch: np.ndarray):
        """(what postprocess takes, embeddings or None): one model call either way."""
        clf = self.clf
        if not self.spec.embeddings:
            return clf.run(batch), None
        if clf.gallery is not None:  # retrieval runs on the embeddings already
            emb = clf.run_embedding(batch)
            return emb, emb
        return clf.run_logits_and_embedding(batch)  # one model call, not two
