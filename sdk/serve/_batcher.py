"""Dynamic micro-batching across concurrent requests (asyncio; the model runs on its own thread).

Each request submits one preprocessed tensor and awaits its row of the output. One collector
task takes the first waiting tensor, gathers more until ``max_batch`` or ``max_delay_s`` after
that first one (but waits only while other requests are on their way: announced and still
being read or preprocessed, so a lone request never waits for company), and runs the whole batch on a dedicated inference thread, so the event loop
never blocks on the model. While a batch runs, new requests wait and form the next batch: the
busier the service, the larger the batches. At most ``max_queue`` tensors wait (not yet sent to
the model); beyond that :meth:`submit` raises :class:`Overloaded` at once instead of letting
latency grow without bound.

:class:`DecodePool` (``_decode_pool.py``) decodes the images before they are submitted.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full or the batcher is shutting down."""


class MicroBatcher:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32,
                 max_delay_s: float = 0.002, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay_s >= 0")
        self._infer, self.max_batch, self.max_delay_s, self.max_queue = infer, max_batch, max_delay_s, max_queue
        self._queue: asyncio.Queue | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._waiting = 0          # submitted, not yet handed to the model
        self._incoming = 0         # announced, not yet submitted (reading or preprocessing)
        self._closing = False
        self.batches = 0
        self.images = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def start(self) -> None:
        self._queue, self._arrived = asyncio.Queue(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skulens-infer")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="skulens-batcher")

    @contextlib.contextmanager
    def announce(self):
        """Wrap the work of a request before its :meth:`submit` (reading, preprocessing): a
        forming batch waits for announced requests (up to ``max_delay_s``), not for others."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            if self._arrived is not None:
                self._arrived.set()  # the collector re-checks whether anyone is still coming

    def submit(self, x: np.ndarray) -> asyncio.Future:
        """Queue one tensor (no batch axis) -> future of (output row, size of its batch)."""
        if self._closing or self._task is None:
            raise Overloaded("the service is shutting down")
        if self._waiting >= self.max_queue:
            raise Overloaded(f"{self._waiting} images are already waiting for the model (max_queue "
                             f"{self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self._waiting += 1
        self._queue.put_nowait((x, fut))
        self._arrived.set()
        return fut

    async def stop(self) -> None:
        """Refuse new work, finish everything already submitted, stop the inference thread."""
        if self._task is None:
            return
        self._closing = True
        self._queue.put_nowait(None)
        self._arrived.set()
        await self._task
        self._executor.shutdown(wait=True)
        self._task = None

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = loop.time() + self.max_delay_s
            while len(batch) < self.max_batch:
                while len(batch) < self.max_batch and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                if stopping or len(batch) >= self.max_batch or self._incoming == 0:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            self._waiting -= len(batch)
            await self._run(loop, batch)

    async def _run(self, loop, batch) -> None:
        live = [(x, f) for x, f in batch if not f.done()]  # timed-out requests are skipped
        if not live:
            return
        try:
            out = await loop.run_in_executor(self._executor, self._infer, np.stack([x for x, _ in live]))
        except Exception as exc:  # the model failed: every request of the batch gets the error
            log.exception("inference failed for a batch of %d", len(live))
            for _, f in live:
                if not f.done():
                    f.set_exception(exc)
            return
        self.batches += 1
        self.images += len(live)
        for i, (_, f) in enumerate(live):
            if not f.done():
                f.set_result((out[i], len(live)))


# -- decoding in worker processes ----------------------------------------------------------------
# A decode cannot be interrupted inside a thread (OpenCV holds it until done), so images are
# decoded by worker processes: a decode still running at its request's deadline is stopped by
# killing its worker (a fresh one replaces it), and each worker's address space is capped, so an
# image whose decode needs more memory fails at once with an allocation error instead of taking
# gigabytes (and seconds) from the service and making other decodes fail.
