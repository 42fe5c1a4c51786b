"""The parent's side of the worker protocol (see ``_worker.py``), and short-lived probes that
time ``import skulens`` and a cold start in a fresh interpreter."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 300.0


class WorkerError(RuntimeError):
    """A worker process failed; the message carries its error or the tail of its log."""


def worker_env(threads: int | None = None) -> dict:
    """The parent's environment, the repository importable, and with ``threads`` the OpenMP /
    MKL / OpenBLAS pools capped too (torch.set_num_threads alone leaves an idle OpenMP pool
    whose threads compete for the CPU on a busy machine)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(int(threads))
    return env


class Worker:
    """One configuration's process. ``request`` sends a command and returns its JSON answer."""

    def __init__(self, spec: dict, log_path: Path):
        self.spec = spec
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "skulens.bench._worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=worker_env(spec.get("threads")),
                                     cwd=os.getcwd())
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._write(spec)
            self.ready = self._recv(STARTUP_TIMEOUT_S)
        except BaseException:
            self.kill()
            raise

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _write(self, obj):
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(self._why("the worker exited")) from None

    def _why(self, what: str) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return what + (": " + " | ".join(tail) if tail else "")

    def _recv(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"no answer within {timeout:.0f}s") from None
        if line is None:
            self.proc.wait(timeout=10)
            raise WorkerError(self._why(f"the worker exited (code {self.proc.returncode})"))
        msg = json.loads(line)
        if msg.get("event") == "error":
            raise WorkerError(msg["error"])
        return msg

    def request(self, cmd: dict, timeout: float = 600.0) -> dict:
        self._write(cmd)
        return self._recv(timeout)

    def close(self) -> dict:
        """Ask the worker to exit; returns its final report (peak RSS) or {} if it is gone."""
        msg = {}
        if self.proc.poll() is None:
            try:
                msg = self.request({"cmd": "exit"}, timeout=60)
            except WorkerError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        return msg

    def kill(self) -> None:
        """Stop the process (if still running) and release its pipes and log file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        try:
            self.proc.stdin.close()
        except OSError:  # the pipe may already be broken
            pass
        self._reader.join(timeout=10)  # the reader ends at EOF, once the process is gone
        self.proc.stdout.close()
        self._log.close()


def _probe(code: str, timeout: float = 120.0, env: dict | None = None) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                             env={**worker_env(), **(env or {})}, cwd=os.getcwd())
    except subprocess.TimeoutExpired:
        raise WorkerError(f"probe gave no answer within {timeout:.0f}s") from None
    if out.returncode != 0:
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])
        raise WorkerError(f"probe failed (code {out.returncode}): {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def interpreter_start_s(repeats: int = 3) -> float:
    """Wall time of ``python -c pass`` (what every fresh process pays before importing anything)."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=worker_env())
        times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])


def import_sdk_probe() -> dict:
    return _probe("import json; from skulens.bench._worker import import_sdk_time as f; print(json.dumps(f()))")


def cold_start_probe(path: str, image: str, threads: int = 1, top_k: int = 5, backend: str = "onnxruntime") -> dict:
    args = json.dumps([str(path), str(image), int(threads), int(top_k), str(backend)])
    return _probe(f"import json; from skulens.bench._worker import cold_start as f; print(json.dumps(f(*json.loads({args!r}))))")


def nncf_quantize_probe(fp32: str, calibration: str, out: str, timeout: float = 1800.0) -> dict:
    """:func:`_worker.nncf_quantize` in a fresh interpreter (NNCF's telemetry off: ``NNCF_CI``)."""
    args = json.dumps([str(fp32), str(calibration), str(out)])
    return _probe(f"import json; from skulens.bench._worker import nncf_quantize as f; print(json.dumps(f(*json.loads({args!r}))))",
                  timeout=timeout, env={"NNCF_CI": "1"})
