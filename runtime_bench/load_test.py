"""Load test of ``skulens serve``: throughput and p50/p99 latency with and without micro-batching,
and a slow-client (slowloris) attack.

    python -m skulens.bench.load_test MODEL --image PHOTO [--concurrency 1 8 32] [--duration 3]
    python -m skulens.bench.load_test MODEL --image PHOTO --slowloris 40 [--duration 10]

Starts two real servers on free loopback ports (micro-batching on: ``--max-batch`` /
``--max-delay-ms``; off: ``--max-batch 1``), warms both up, then for each concurrency runs
closed-loop clients (each keeps one keep-alive connection and sends its next request when the
previous answer arrived) against both servers, interleaved round by round in alternating order,
so that noise on a shared machine hits both alike. Bounded: loopback only, ``duration`` seconds
per (concurrency, server, round), servers stopped at the end (also on errors or Ctrl-C).
Reports requests/s, p50/p99 latency, mean batch size, errors, and the gain of batching as
ratios; ``--out`` writes the JSON report atomically.

``--slowloris N`` instead starts one server and opens N connections that never finish their
request: half send the request head a header line at a time, half send a complete head and then
trickle the body, each one line or byte every ``--interval`` seconds for ``--duration`` seconds
(optionally reconnecting when the server drops them). Meanwhile a well-behaved client sends a
photo every 0.2 s. Reports how each attacking connection ended (408 and closed by the server,
refused with 503 at once, or still open), how long the server took to drop them, the
well-behaved client's answers, and the server's open file descriptors before, at most during,
and after the attack (Linux).
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
import tempfile
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
    with server_process(model, *flags, startup_timeout=startup_timeout) as (port, _):
        yield port


@contextlib.contextmanager
def server_process(model, *flags, startup_timeout: float = 120.0, env: dict | None = None):
    """``skulens serve MODEL FLAGS`` on a free loopback port until ready -> (port, Popen); its
    log goes to a temporary file (``proc.log_path``, removed afterwards: a full pipe would stall
    the server). Stopped (SIGTERM, then SIGKILL) on leaving. ``env``: extra variables; no
    SKULENS_API_TOKEN unless given there."""
    port = _free_port()
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    full_env.pop("SKULENS_API_TOKEN", None)
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="skulens-serve-") as tmp:
        log_path = Path(tmp) / "serve.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "skulens.cli", "-q", "serve", str(model), "--host", HOST,
                                     "--port", str(port), *map(str, flags)], env=full_env,
                                    stdout=subprocess.DEVNULL, stderr=log)
        proc.log_path = log_path
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited during startup: {log_path.read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {startup_timeout:.0f}s")
                time.sleep(0.1)
            yield port, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


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
                  max_batch: int = 32, max_delay_ms: float = 2.0, threads: int = 1, warmup_s: float = 1.0,
                  server_flags: tuple = ()) -> dict:
    """Measure both servers side by side; returns the report dict (see the module doc)."""
    if duration <= 0 or duration > 60 or rounds < 1 or rounds > 10 or not concurrency or max(concurrency) > 256:
        raise ValueError("keep it bounded: 0 < duration <= 60 s, 1 <= rounds <= 10, concurrency <= 256")
    data = Path(image).read_bytes()
    common = ("--num-threads", threads, "--max-queue", max(256, 4 * max(concurrency)),
              "--max-connections", max(256, 2 * max(concurrency) + 16), *server_flags)
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
            "server_flags": [str(f) for f in server_flags],
            "cpu_count": os.cpu_count(), "concurrency": results}


def _fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # not Linux, or the process is gone
        return None


def _status_of(data: bytes) -> int | None:
    if data.startswith(b"HTTP/1."):
        with contextlib.suppress(IndexError, ValueError):
            return int(data.split(b" ", 2)[1])
    return None


async def _slow_client(port: int, kind: str, interval: float, stop_at: float, reconnect: bool, out: list) -> None:
    """One slowloris connection (``kind`` "head": the request head a header line at a time;
    "body": a complete head, then the body a byte at a time), until the server answers or drops
    it, or ``stop_at``; with ``reconnect``, again until ``stop_at``."""
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            out.append({"kind": kind, "outcome": "connect_failed", "status": None, "held_s": 0.0,
                        "error": type(exc).__name__})
            if not reconnect:
                return
            await asyncio.sleep(interval)
            continue
        head = f"POST /v1/classify HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: image/jpeg\r\n"
        writer.write((head if kind == "head" else head + "Content-Length: 1000000\r\n\r\n").encode())
        read = asyncio.ensure_future(reader.read(65536))
        outcome, status, sent = "open_at_end", None, 0
        try:
            while time.monotonic() < stop_at:
                done, _ = await asyncio.wait({read}, timeout=interval)
                if done:
                    data = read.result()
                    status = _status_of(data)
                    outcome = {408: "timed_out", 503: "refused"}.get(status, "answered" if status else "closed")
                    break
                sent += 1
                writer.write(b"X-Slow-%d: x\r\n" % sent if kind == "head" else b"\xff")
                await writer.drain()
        except (ConnectionError, OSError):
            outcome = "reset"
        finally:
            read.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        out.append({"kind": kind, "outcome": outcome, "status": status, "held_s": round(time.monotonic() - t0, 3)})
        if not reconnect:
            return
        await asyncio.sleep(interval)


async def _probe(port: int, request: bytes, stop_at: float, out: list, every: float = 0.2) -> None:
    """A well-behaved client: one request on a fresh connection every ``every`` seconds."""
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            try:
                writer.write(request)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), 15)
            finally:
                writer.close()
            out.append((_status_of(data) or "no_answer", time.perf_counter() - t0))
        except (OSError, asyncio.TimeoutError) as exc:
            out.append((type(exc).__name__, time.perf_counter() - t0))
        await asyncio.sleep(max(0.0, every - (time.perf_counter() - t0)))


async def _attack(port: int, pid: int, image: bytes, attackers: int, interval: float, duration: float,
                  reconnect: bool) -> dict:
    request = (f"POST /v1/classify?top_k=1 HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: image/jpeg\r\n"
               f"Content-Length: {len(image)}\r\nConnection: close\r\n\r\n").encode() + image
    probes: list = []
    await _probe(port, request, time.monotonic() + 0.5, [])  # warm up
    await asyncio.sleep(0.3)
    fds = {"before": _fd_count(pid), "max_during": None, "after": None}
    samples: list = []
    stop_at = time.monotonic() + duration

    async def sample():
        while time.monotonic() < stop_at:
            samples.append(_fd_count(pid))
            await asyncio.sleep(0.1)

    conns: list = []
    await asyncio.gather(sample(), _probe(port, request, stop_at, probes),
                         *(_slow_client(port, ("head", "body")[i % 2], interval, stop_at, reconnect, conns)
                           for i in range(attackers)))
    await asyncio.sleep(1.0)
    fds["max_during"] = max((n for n in samples if n is not None), default=None)
    fds["after"] = _fd_count(pid)
    outcomes: dict = {}
    for c in conns:
        outcomes[c["outcome"]] = outcomes.get(c["outcome"], 0) + 1
    held = {}
    for kind in ("head", "body"):
        t = [c["held_s"] for c in conns if c["kind"] == kind and c["outcome"] in ("timed_out", "closed", "reset")]
        held[kind] = {"dropped": len(t), "median_s": round(float(np.median(t)), 3) if t else None,
                      "max_s": round(max(t), 3) if t else None}
    statuses: dict = {}
    for st, _ in probes:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    ok_lat = np.array([lat for st, lat in probes if st == 200]) * 1e3
    return {"connections": len(conns), "outcomes": outcomes, "dropped_after": held,
            "answered_statuses": sorted({c["status"] for c in conns if c["status"]}),
            "probe": {"requests": len(probes), "statuses": statuses,
                      "p50_ms": round(float(np.percentile(ok_lat, 50)), 3) if ok_lat.size else None,
                      "p99_ms": round(float(np.percentile(ok_lat, 99)), 3) if ok_lat.size else None},
            "fds": fds}


def run_slowloris(model, image, *, attackers: int = 40, interval: float = 0.5, duration: float = 10.0,
                  reconnect: bool = False, server_flags: tuple = ()) -> dict:
    """A bounded slow-client attack on a real server on loopback (see the module doc) -> report."""
    if not 0 < duration <= 120 or not 1 <= attackers <= 1000 or not 0.01 <= interval <= 10:
        raise ValueError("keep it bounded: 0 < duration <= 120 s, 1 <= attackers <= 1000, 0.01 <= interval <= 10 s")
    data = Path(image).read_bytes()
    with server_process(model, *server_flags) as (port, proc):
        report = asyncio.run(_attack(port, proc.pid, data, attackers, interval, duration, reconnect))
        healthy = False
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=5) as r:
                healthy = r.status == 200
    return {"model": str(model), "host": HOST, "attackers": attackers, "interval_s": interval,
            "duration_s": duration, "reconnect": reconnect, "server_flags": [str(f) for f in server_flags],
            "healthy_after": healthy, **report}


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
    p.add_argument("--slowloris", type=int, metavar="N", default=None,
                   help="instead: a slow-client attack with N connections for --duration seconds")
    p.add_argument("--interval", type=float, default=0.5, help="slowloris: seconds between an attacker's bytes")
    p.add_argument("--reconnect", action="store_true", help="slowloris: attackers reconnect when dropped")
    p.add_argument("--server-flags", default="", metavar="FLAGS",
                   help="extra `skulens serve` flags, e.g. '--decode-workers 4' or, for --slowloris, "
                   "'--header-timeout-s 2 --max-connections 32'")
    args = p.parse_args(argv)
    if args.slowloris is not None:
        report = run_slowloris(args.model, args.image, attackers=args.slowloris, interval=args.interval,
                               duration=args.duration, reconnect=args.reconnect,
                               server_flags=tuple(args.server_flags.split()))
        print(json.dumps(report, indent=2))
        if args.out:
            from skulens.bench._report import atomic_write_bytes

            atomic_write_bytes(args.out, json.dumps(report, indent=2).encode())
        return 0
    report = run_load_test(args.model, args.image, concurrency=tuple(args.concurrency), duration=args.duration,
                           rounds=args.rounds, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
                           threads=args.threads, server_flags=tuple(args.server_flags.split()))
    print(markdown(report))
    if args.out:
        from skulens.bench._report import atomic_write_bytes

        atomic_write_bytes(args.out, json.dumps(report, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
