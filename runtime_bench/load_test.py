"""Load test of ``skulens serve``: throughput and p50/p99 latency with and without micro-batching.

    python -m skulens.bench.load_test MODEL --image PHOTO [--concurrency 1 8 32] [--duration 3]

Starts two real servers on free loopback ports (micro-batching on: ``--max-batch`` /
``--max-delay-ms``; off: ``--max-batch 1``), warms both up, then for each concurrency runs
closed-loop clients (each keeps one keep-alive connection and sends its next request when the
previous answer arrived) against both servers, interleaved round by round in alternating order,
so that noise on a shared machine hits both alike. Bounded: loopback only, ``duration`` seconds
per (concurrency, server, round), servers stopped at the end (also on errors or Ctrl-C).
Reports requests/s, p50/p99 latency, mean batch size, errors, and the gain of batching as
ratios; ``--out`` writes the JSON report atomically.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else: this tool only loads the local machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(model, *flags, startup_timeout: float = 120.0):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("SKULENS_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "skulens.cli", "-q", "serve", str(model), "--host", HOST,
                             "--port", str(port), *map(str, flags)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited during startup: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {startup_timeout:.0f}s")
            time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()


async def _client(port: int, request: bytes, stop_at: float, out: dict) -> None:
    """One closed-loop client on one keep-alive HTTP/1.1 connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                key = key.strip().lower()
                if key == "content-length":
                    length = int(value)
                elif key == "connection" and value.strip().lower() == "close":
                    close = True
            body = await reader.readexactly(length)
            if status == 200:
                out["latency"].append(time.perf_counter() - t0)
                out["batch"].append(json.loads(body)["batch_size"])
            else:
                out["errors"][status] = out["errors"].get(status, 0) + 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _load(port: int, image: bytes, concurrency: int, duration: float) -> dict:
    head = (f"POST /v1/classify?top_k=1 HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(image)}\r\n\r\n").encode()
    out = {"latency": [], "batch": [], "errors": {}}
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, head + image, t0 + duration, out) for _ in range(concurrency)))
    out["seconds"] = time.perf_counter() - t0
    return out


def _summary(runs: list[dict]) -> dict:
    lat = np.concatenate([r["latency"] for r in runs]) * 1e3 if any(r["latency"] for r in runs) else np.zeros(0)
    seconds = sum(r["seconds"] for r in runs)
    errors: dict = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[str(k)] = errors.get(str(k), 0) + v
    batch = [b for r in runs for b in r["batch"]]
    return {"requests": int(lat.size), "seconds": round(seconds, 3),
            "throughput_rps": round(lat.size / seconds, 2) if seconds else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
            "mean_batch_size": round(float(np.mean(batch)), 2) if batch else None, "errors": errors}


def run_load_test(model, image, *, concurrency=(1, 8, 32), duration: float = 3.0, rounds: int = 2,
                  max_batch: int = 32, max_delay_ms: float = 2.0, threads: int = 1, warmup_s: float = 1.0) -> dict:
    """Measure both servers side by side; returns the report dict (see the module doc)."""
    if duration <= 0 or duration > 60 or rounds < 1 or rounds > 10 or not concurrency or max(concurrency) > 256:
        raise ValueError("keep it bounded: 0 < duration <= 60 s, 1 <= rounds <= 10, concurrency <= 256")
    data = Path(image).read_bytes()
    common = ("--num-threads", threads, "--max-queue", max(256, 4 * max(concurrency)))
    names = ("batched", "unbatched")
    with _server(model, "--max-batch", max_batch, "--max-delay-ms", max_delay_ms, *common) as p_on, \
            _server(model, "--max-batch", 1, *common) as p_off:
        ports = {"batched": p_on, "unbatched": p_off}
        for port in ports.values():
            asyncio.run(_load(port, data, 4, warmup_s))  # first requests pay one-off costs
        results = {}
        for c in concurrency:
            runs = {n: [] for n in names}
            for r in range(rounds):
                for n in (names if r % 2 == 0 else names[::-1]):
                    runs[n].append(asyncio.run(_load(ports[n], data, c, duration)))
            row = {n: _summary(runs[n]) for n in names}
            on, off = row["batched"], row["unbatched"]
            row["throughput_gain"] = round(on["throughput_rps"] / off["throughput_rps"], 3) if off["throughput_rps"] else None
            row["p99_ratio_batched_over_unbatched"] = (round(on["p99_ms"] / off["p99_ms"], 3)
                                                      if on["p99_ms"] and off["p99_ms"] else None)
            results[str(c)] = row
    return {"model": str(model), "image": str(image), "image_bytes": len(data), "host": HOST,
            "duration_s": duration, "rounds": rounds, "threads": threads,
            "batching": {"max_batch": max_batch, "max_delay_ms": max_delay_ms},
            "cpu_count": os.cpu_count(), "concurrency": results}


def markdown(report: dict) -> str:
    lines = [f"Load test of `skulens serve` ({Path(report['model']).name}, {report['threads']} ORT thread, "
             f"batching max {report['batching']['max_batch']} / {report['batching']['max_delay_ms']} ms, "
             f"{report['rounds']} x {report['duration_s']} s per cell, {report['cpu_count']} CPUs)", "",
             "| concurrency | server | req/s | p50 ms | p99 ms | mean batch | errors |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for c, row in report["concurrency"].items():
        for n in ("batched", "unbatched"):
            s = row[n]
            lines.append(f"| {c} | {n} | {s['throughput_rps']} | {s['p50_ms']} | {s['p99_ms']} | "
                         f"{s['mean_batch_size']} | {s['errors'] or '-'} |")
    lines += ["", "| concurrency | throughput gain (batched / unbatched) | p99 ratio (batched / unbatched) |",
              "|---:|---:|---:|"]
    for c, row in report["concurrency"].items():
        lines.append(f"| {c} | {row['throughput_gain']}x | {row['p99_ratio_batched_over_unbatched']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.load_test", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--image", required=True, help="a real photo sent as the request body")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per (concurrency, server, round)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads of each server")
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args(argv)
    report = run_load_test(args.model, args.image, concurrency=tuple(args.concurrency), duration=args.duration,
                           rounds=args.rounds, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
                           threads=args.threads)
    print(markdown(report))
    if args.out:
        from skulens.bench._report import atomic_write_bytes

        atomic_write_bytes(args.out, json.dumps(report, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
