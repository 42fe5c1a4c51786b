"""Image decoding for the service in worker processes: each request's decode runs with a
deadline and under a memory cap, so a slow or huge image is stopped (its worker replaced)
instead of occupying the service; the results go to :class:`MicroBatcher` (``_batcher.py``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .._io import proc_bytes
from ._batcher import Overloaded

log = logging.getLogger(__name__)


class DecodeError(Exception):
    """A decode in a worker did not give a tensor. ``kind``: ``"image"`` (not a usable image),
    ``"too_large"`` (over ``max_pixels`` or ``max_aspect_ratio``), ``"memory"`` (needs more than the worker's memory
    limit), ``"timeout"`` (stopped at the deadline), ``"crashed"`` (the worker died),
    ``"error"`` (an unexpected exception in the worker)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass(frozen=True)
class DecodeSetup:
    """What a worker needs to turn encoded bytes into the model's input (picklable)."""

    max_pixels: int
    max_aspect_ratio: float
    decode_contract: object  # PreprocessConfig a JPEG is decoded for (its reduced scale)
    preprocess: object       # PreprocessConfig giving the model's tensor


_ALLOCATION = ("insufficient memory", "failed to allocate", "out of memory", "bad_alloc", "memoryerror",
               "cannot allocate")


def is_allocation_failure(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in _ALLOCATION)


def _run_job(setup: DecodeSetup, kind: str, data: bytes):
    from .._image import decode_image

    if kind == "classify":
        return setup.preprocess.apply(decode_image(data, setup.max_pixels, preprocess=setup.decode_contract,
                                                   max_aspect_ratio=setup.max_aspect_ratio))
    if kind == "enrol":  # decoded as ProductGallery.add decodes it: the photo's identity is the hash of its pixels
        from .._gallery import image_sha256

        pixels = decode_image(data, setup.max_pixels, preprocess=setup.decode_contract,
                              max_aspect_ratio=setup.max_aspect_ratio)
        return setup.preprocess.apply(pixels), image_sha256(pixels)
    raise ValueError(f"unknown decode job {kind!r}")


def _limit_memory(memory_mb: int) -> int | None:
    """Cap this process's address space at what it uses now plus ``memory_mb`` (Linux; elsewhere
    no cap). Returns the cap in bytes."""
    if not memory_mb:
        return None
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    base = proc_bytes("VmSize")
    if base is None:  # pragma: no cover - no /proc
        return None
    limit = base + memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def worker_process_main(fd: int) -> None:
    """Entry point of a decode worker process (see :meth:`DecodePool._start_worker`): its socket
    is file descriptor ``fd``; the first message is ``(setup, memory_mb)``."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    conn = Connection(fd)
    try:
        setup, memory_mb = conn.recv()
    except (EOFError, OSError):
        return
    _worker_main(conn, setup, memory_mb)


def _worker_main(conn, setup: DecodeSetup, memory_mb: int) -> None:
    """A decode worker: answers ``(kind, bytes)`` jobs on ``conn`` until ``None`` or EOF."""
    import cv2

    from .._errors import ImageError, ImageTooLargeError

    cv2.setNumThreads(1)  # one decode at a time per worker; no thread pools reserving memory
    for ext in (".png", ".jpg"):  # load the codecs before the memory cap is measured
        _run_job(setup, "classify", cv2.imencode(ext, np.full((8, 8, 3), 128, np.uint8))[1].tobytes())
    _limit_memory(memory_mb)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the service is gone
            return
        if job is None:
            return
        try:
            reply = ("ok", _run_job(setup, *job))
        except MemoryError as exc:
            reply = ("memory", f"out of memory ({exc or 'MemoryError'})")
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the request
            text = str(exc)
            if is_allocation_failure(text):
                reply = ("memory", text)
            elif isinstance(exc, ImageError):
                reply = ("too_large" if isinstance(exc, ImageTooLargeError) else "image", text)
            else:
                reply = ("error", f"{type(exc).__name__}: {text}")
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", "out of memory while returning the decoded image"))


class _Worker:
    def __init__(self, proc, conn):
        self.proc, self.conn = proc, conn

    def call(self, job):  # blocking: on a pool thread
        self.conn.send(job)
        return self.conn.recv()


class DecodePool:
    """``workers`` decode processes; :meth:`run` decodes one image within a deadline.

    At most ``max_waiting`` decodes wait for a free worker (beyond: :class:`Overloaded`). A decode
    that is still running at its deadline, or whose request is cancelled, is stopped by killing
    its worker; a replacement is started in the background. ``memory_mb`` caps each worker's
    address space above what it uses when idle (0: no cap)."""

    def __init__(self, setup: DecodeSetup, *, workers: int, memory_mb: int = 1024, max_waiting: int = 256,
                 start_timeout_s: float = 120.0):
        if workers < 1 or max_waiting < 1 or memory_mb < 0:
            raise ValueError("workers and max_waiting must be >= 1 and memory_mb >= 0")
        self.setup, self.workers, self.memory_mb = setup, workers, memory_mb
        self.max_waiting, self.start_timeout_s = max_waiting, start_timeout_s
        self._idle: asyncio.Queue | None = None
        self._all: set[_Worker] = set()
        self._threads: ThreadPoolExecutor | None = None
        self._respawns: set[asyncio.Task] = set()
        self._waiting = 0
        self._closing = False
        self.decodes = 0
        self.stopped = 0   # decodes stopped at their deadline (worker killed)
        self.crashed = 0   # workers that died during a decode

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        self._threads = ThreadPoolExecutor(max_workers=2 * self.workers + 2, thread_name_prefix="skulens-decode")
        started = await asyncio.gather(*(loop.run_in_executor(self._threads, self._start_worker)
                                         for _ in range(self.workers)), return_exceptions=True)
        failed = [w for w in started if isinstance(w, BaseException)]
        for w in started:
            if not isinstance(w, BaseException):
                self._idle.put_nowait(w)
        if failed:
            await self.stop()
            raise RuntimeError(f"decode workers did not start: {failed[0]}") from failed[0]

    def _start_worker(self) -> _Worker:
        """Start one worker and wait until it is ready (blocking: on a pool thread).

        A fresh interpreter (no fork of a threaded server) started as a plain subprocess, not by
        multiprocessing's spawn, which would re-import the caller's main script (and fail in a
        script without an ``if __name__ == "__main__"`` guard). It talks over a socket pair."""
        import json
        import socket
        import subprocess
        import sys

        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[2]); "
                "from skulens.serve._decode_pool import worker_process_main; worker_process_main(int(sys.argv[1]))")
        try:
            proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()),
                                     json.dumps([p for p in sys.path if p])], pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        finally:
            theirs.close()
        worker = _Worker(proc, Connection(ours.detach()))
        try:
            worker.conn.send((self.setup, self.memory_mb))
            if not worker.conn.poll(self.start_timeout_s):
                raise RuntimeError(f"no answer within {self.start_timeout_s:g} s")
            worker.conn.recv()
        except BaseException:
            self._kill(worker)
            raise
        self._all.add(worker)
        return worker

    @staticmethod
    def _kill(worker: _Worker) -> None:
        """Stop a worker now and reap it (blocking, briefly)."""
        if worker.proc.poll() is None:
            worker.proc.kill()
        with contextlib.suppress(Exception):
            worker.proc.wait(5)
        worker.conn.close()

    @property
    def busy(self) -> int:
        return len(self._all) - (self._idle.qsize() if self._idle is not None else 0)

    async def run(self, kind: str, data: bytes, deadline: float):
        """Decode ``data`` for job ``kind`` ("classify": the model's tensor; "enrol": (tensor,
        sha256 of the pixels)) before ``deadline`` (event-loop time). Raises DecodeError or
        Overloaded."""
        loop = asyncio.get_running_loop()
        if self._closing or self._idle is None:
            raise Overloaded("the service is shutting down")
        if self._waiting >= self.max_waiting:
            raise Overloaded(f"{self._waiting} images are already waiting for a decode worker (max "
                             f"{self.max_waiting})")
        self._waiting += 1
        try:
            worker = await asyncio.wait_for(self._idle.get(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise DecodeError("timeout", "no decode worker became free before the request's deadline "
                              "(every worker is busy)") from None
        finally:
            self._waiting -= 1
        job = loop.run_in_executor(self._threads, worker.call, (kind, data))
        try:
            status, payload = await asyncio.wait_for(job, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            self.stopped += 1
            self._replace(worker, "stopped at the deadline")
            raise DecodeError("timeout", "decoding did not finish before the request's deadline; it was "
                              "stopped") from None
        except (EOFError, OSError):
            self.crashed += 1
            self._replace(worker, "died while decoding")
            raise DecodeError("crashed", "the image decoder crashed on this image") from None
        except BaseException:  # the request was cancelled (its timeout, the client went away)
            self.stopped += 1
            self._replace(worker, "stopped: its request was cancelled")
            raise
        self.decodes += 1
        self._idle.put_nowait(worker)
        if status == "ok":
            return payload
        raise DecodeError(status, payload)

    def _replace(self, worker: _Worker, why: str) -> None:
        """Kill ``worker`` now (its decode stops, its memory is freed) and start another."""
        if worker.proc.poll() is None:
            worker.proc.kill()
        self._all.discard(worker)
        log.warning("decode worker %s %s; starting another", worker.proc.pid, why)
        task = asyncio.get_running_loop().create_task(self._respawn(worker))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, dead: _Worker) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._threads, self._kill, dead)
        if self._closing:
            return
        try:
            worker = await loop.run_in_executor(self._threads, self._start_worker)
        except Exception:  # noqa: BLE001 - the pool goes on with one worker fewer
            log.exception("could not start a decode worker")
            return
        if self._closing:
            await loop.run_in_executor(self._threads, self._kill, worker)
            return
        self._idle.put_nowait(worker)

    async def stop(self) -> None:
        """Stop every worker (busy ones too: call after in-flight requests have finished)."""
        self._closing = True
        loop = asyncio.get_running_loop()
        if self._respawns:
            await asyncio.gather(*self._respawns, return_exceptions=True)
        workers, self._all = list(self._all), set()
        for w in workers:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
        if self._threads is not None:
            await asyncio.gather(*(loop.run_in_executor(self._threads, self._stop_worker, w) for w in workers))
            self._threads.shutdown(wait=True)
            self._threads = None

    def _stop_worker(self, worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.proc.wait(2)
        self._kill(worker)
