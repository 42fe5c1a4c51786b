"""Schema-driven fuzzing of ``skulens serve`` with schemathesis, against its own OpenAPI schema.

    python -m skulens.bench.api_fuzz MODEL --requests 1000 [--image PHOTO] [--gallery G] [--out r.json]

Starts the service on a free loopback port (with a random bearer token, and with a scratch copy
of ``--gallery`` so that enrolling and delisting are fuzzed too without touching the file),
reads ``/openapi.json`` and sends at least ``--requests`` requests generated from it by
schemathesis (hypothesis): schema-valid ("positive") and schema-violating ("negative") query
parameters, headers and bodies for every operation. Image bodies are schemathesis' random
bytes or, half the time in positive cases, the photo (``--image``, else a generated one) intact,
re-encoded, truncated, bit-flipped or as a 35-byte GIF declaring 20000x20000 pixels, so that
decoding, batching and the error paths behind them are reached too.

Each answer is checked by schemathesis (not a server error, status code documented,
content type, response schema; negative cases: rejected) and its status against the operation's
documented ones. Reports requests, statuses per operation, responses outside the documented
codes (the goal is 0), every 5xx, transport errors, failed checks (with a curl command to
reproduce the first of each kind), and whether the service still answered and shut down
cleanly. Bounded: loopback only, ``--requests`` at most 100 000, ``--max-seconds`` wall time.
Exit status 1 when any response was undocumented, a 5xx or a transport error.
"""
from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import signal
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from skulens.bench.load_test import HOST, server_process

RAW_MEDIA = ("image/jpeg", "image/png", "application/octet-stream")


def bomb_gif(width: int = 20000, height: int = 20000, padded: bool = False) -> bytes:
    """A 35-byte GIF whose header declares ``width`` x ``height`` pixels (gigabytes to decode).
    ``padded``: with a comment block long enough that the size is plausible for the file's length
    (the SDK refuses a GIF declaring more pixels than its bytes can encode), so the decoder runs."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    comment = b""
    if padded:
        blocks = -(-width * height // (4096 * 8 // 3) // 255) + 1
        comment = b"\x21\xfe" + (b"\xff" + b"c" * 255) * blocks + b"\x00"
    return b"GIF89a" + screen + comment + image + b"\x02\x02\x44\x01\x00" + b"\x3b" + b"\x00" * 6


def photo_variants(photo: bytes | None, seed: int = 0) -> list[bytes]:
    """The photo as JPEG, PNG, WebP, truncated, bit-flipped, plus the GIF bomb and empty-ish bodies."""
    rng = np.random.default_rng(seed)
    if photo is None:
        img = np.zeros((96, 128, 3), np.uint8)
        img[:, :, 1] = np.linspace(0, 255, 128, dtype=np.uint8)
        img[20:70, 30:90] = (30, 60, 200)
        photo = cv2.imencode(".jpg", img)[1].tobytes()
    img = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    out = [photo]
    if img is not None:
        small = cv2.resize(img, (min(img.shape[1], 160), min(img.shape[0], 120)))
        out += [cv2.imencode(ext, small)[1].tobytes() for ext in (".png", ".webp", ".bmp")]
    flipped = bytearray(photo)
    for i in rng.integers(len(photo) // 4, len(photo), 8):
        flipped[i] ^= 0xFF
    out += [photo[: len(photo) // 2], bytes(flipped), bomb_gif(), b"\xff\xd8\xff", b"GIF89a"]
    return out


def _reproduce(case, token: str) -> str:
    try:
        return case.as_curl_command(headers={"Authorization": f"Bearer {token}"})
    except Exception:  # noqa: BLE001 - a report helper only
        return f"{case.method.upper()} {case.path}"


def _negated(case, location: str) -> bool:
    """Whether schemathesis made ``location`` ("header", "query", "body"...) of ``case`` invalid."""
    components = getattr(getattr(case, "meta", None), "components", None) or {}
    for where, info in components.items():
        if getattr(where, "value", where) == location:
            return getattr(getattr(info, "mode", None), "value", None) == "negative"
    return False


def _failure_titles(exc: BaseException) -> list[str]:
    """The names of the checks that failed, from schemathesis' exception (group)."""
    inner = getattr(exc, "exceptions", None)
    if inner:
        return [t for e in inner for t in _failure_titles(e)]
    return [getattr(exc, "title", None) or type(exc).__name__]


def run_api_fuzz(model, *, requests: int = 1000, image=None, gallery=None, seed: int = 0,
                 max_seconds: float = 600.0, server_flags: tuple = ()) -> dict:
    """Fuzz a real service on loopback with at least ``requests`` generated requests -> report."""
    import hypothesis
    import requests as http
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_schema_conformance, status_code_conformance)

    if not 1 <= requests <= 100_000 or not 0 < max_seconds <= 7200:
        raise ValueError("keep it bounded: 1 <= requests <= 100000, 0 < max_seconds <= 7200")
    token = secrets.token_urlsafe(24)
    variants = photo_variants(Path(image).read_bytes() if image else None, seed)
    rng = random.Random(seed)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    report: dict = {"model": str(model), "host": HOST, "requests": 0, "by_operation": {}, "undocumented": [],
                    "server_errors": [], "transport_errors": [], "check_failures": {}, "examples": {}}
    with tempfile.TemporaryDirectory(prefix="skulens-api-fuzz-") as tmp:
        flags = list(server_flags)
        if gallery:
            scratch = Path(tmp) / Path(gallery).name
            shutil.copyfile(gallery, scratch)
            flags += ["--gallery", str(scratch)]
        with server_process(model, *flags, env={"SKULENS_API_TOKEN": token}) as (port, proc):
            base = f"http://{HOST}:{port}"
            with urllib.request.urlopen(base + "/openapi.json", timeout=10) as r:
                spec = json.load(r)
            schema = schemathesis.openapi.from_dict(spec)
            ops = [res.ok() for res in schema.get_all_operations()]
            session = http.Session()
            t0 = time.monotonic()
            stop_at = t0 + max_seconds

            def exchange(op, mode, case) -> None:
                documented = spec["paths"][op.path][op.method.lower()]["responses"]
                if mode is GenerationMode.POSITIVE and case.media_type in RAW_MEDIA and rng.random() < 0.5:
                    case.body = rng.choice(variants)
                if not _negated(case, "header"):  # the real token, unless the case is about a bad one
                    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
                label = f"{op.method.upper()} {op.path}"
                report["requests"] += 1
                try:
                    response = case.call(base_url=base, session=session, timeout=30)
                except http.RequestException as exc:
                    report["transport_errors"].append({"operation": label, "error": f"{type(exc).__name__}: {exc}"[:300],
                                                       "reproduce": _reproduce(case, token)})
                    return
                status = response.status_code
                counts = report["by_operation"].setdefault(label, {})
                counts[str(status)] = counts.get(str(status), 0) + 1
                if str(status) not in documented and "default" not in documented:
                    report["undocumented"].append({"operation": label, "status": status,
                                                   "body": response.text[:300], "reproduce": _reproduce(case, token)})
                if status >= 500:
                    report["server_errors"].append({"operation": label, "status": status,
                                                    "body": response.text[:300], "reproduce": _reproduce(case, token)})
                try:
                    case.validate_response(response, checks=checks + ([negative_data_rejection]
                                                                       if mode is GenerationMode.NEGATIVE else []))
                except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - failed checks are exceptions
                    for title in _failure_titles(exc):
                        report["check_failures"][title] = report["check_failures"].get(title, 0) + 1
                        report["examples"].setdefault(title, {"operation": label, "status": status,
                                                              "mode": mode.value, "body": response.text[:300],
                                                              "reproduce": _reproduce(case, token)})

            def batch(op, mode, n: int, round_seed: int) -> int:
                """Up to ``n`` generated requests for one operation and mode -> how many were sent."""
                sent = [0]

                @hypothesis.seed(round_seed)
                @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                          suppress_health_check=list(HealthCheck), derandomize=False)
                @given(case=op.as_strategy(generation_mode=mode))
                def send(case):
                    if time.monotonic() < stop_at:
                        sent[0] += 1
                        exchange(op, mode, case)

                try:
                    send()
                except hypothesis.errors.Unsatisfiable:  # nothing to negate (no parameters, no body)
                    pass
                return sent[0]

            # (operation, mode, weight): operations that take an image get 3 shares, the others 1
            pairs = [(op, mode, 3 if "requestBody" in spec["paths"][op.path][op.method.lower()] else 1)
                     for op in ops for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
            round_no = 0
            while report["requests"] < requests and pairs and time.monotonic() < stop_at:
                unit = max(1, -(-(requests - report["requests"]) // sum(w for _, _, w in pairs)))
                still = []
                for i, (op, mode, weight) in enumerate(pairs):
                    share = unit * weight
                    got = batch(op, mode, share, seed * 1_000_003 + round_no * 1009 + i)
                    if got >= max(1, share // 2):  # a small input space is exhausted: drop it
                        still.append((op, mode, weight))
                    if report["requests"] >= requests:
                        break
                pairs = still or pairs[:1]
                round_no += 1
            report["seconds"] = round(time.monotonic() - t0, 2)
            report["requests_per_s"] = round(report["requests"] / report["seconds"], 1) if report["seconds"] else None
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
                    report["healthy_after"] = r.status == 200
            except OSError:
                report["healthy_after"] = False
            proc.send_signal(signal.SIGTERM)
            try:
                report["exit_code"] = proc.wait(30)
            except Exception:  # noqa: BLE001 - server_process kills it on the way out
                report["exit_code"] = None
            log = proc.log_path.read_text(errors="replace")
            report["server_log_tracebacks"] = log.count("Traceback (most recent call last)")
            if report["server_log_tracebacks"]:
                report["server_log_tail"] = log[-3000:]
    report["operations"] = sorted({f"{op.method.upper()} {op.path}" for op in ops})
    report["summary"] = {"requests": report["requests"], "undocumented": len(report["undocumented"]),
                         "server_errors": len(report["server_errors"]),
                         "transport_errors": len(report["transport_errors"]),
                         "check_failures": sum(report["check_failures"].values())}
    for key in ("undocumented", "server_errors", "transport_errors"):
        report[key] = report[key][:20]  # examples; the counts are in the summary
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.api_fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an exported classifier .onnx to serve")
    p.add_argument("--requests", type=int, default=1000, help="generated requests to send at least (default: 1000)")
    p.add_argument("--image", help="a real photo used as (and mutated into) image bodies")
    p.add_argument("--gallery", help="also fuzz the gallery endpoints on a scratch copy of this gallery file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop generating after this long")
    p.add_argument("--server-flags", default="", metavar="FLAGS", help="extra `skulens serve` flags")
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args(argv)
    report = run_api_fuzz(args.model, requests=args.requests, image=args.image, gallery=args.gallery, seed=args.seed,
                          max_seconds=args.max_seconds, server_flags=tuple(args.server_flags.split()))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from skulens.bench._report import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
    s = report["summary"]
    return 1 if s["undocumented"] or s["server_errors"] or s["transport_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
