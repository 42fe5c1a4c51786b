"""The hostile-input suite: crafted inputs of at most 4 KB that must each cost little and end in
a result or a :class:`skulens.SkulensError`, never a raw exception, a crash or a hang.

    python -m skulens.bench.hostile MODEL.onnx [--data GROCERY] [--out runs/hostile]

The cases are made from one small real photo (``--data``: the first Grocery test photo; else a
generated one), encoded in every format the bundled OpenCV decodes and then tampered with:

- header bombs: each format declaring 20000 x 20000 pixels, a 1 x 30000 strip, no pixels, and
  6000 x 6000 (inside the default limits, so the decoder really starts, on data for 32 x 24);
- truncations at three points (and JPEGs cut short but closed with an end marker), seeded byte
  corruptions, trailing bytes after a valid image;
- formats that are not 8-bit or not images at all; odd numpy arrays; bad paths;
- and every valid encoding, which must classify.

Each case runs through :meth:`ImageClassifier.classify` in this process; the report gives each
case's outcome, its time and the process's peak RSS after it (the high-water mark only grows,
so the last value bounds every case). The test suite runs the same cases (tests/test_hostile_inputs.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("skulens.bench.hostile")

MAX_INPUT_BYTES = 4096
BUDGET_RSS_MB, BUDGET_SECONDS = 300, 1.0
OK, ERROR, TOO_LARGE, ANY = "ok", "error", "too_large", "ok_or_error"


@dataclass(frozen=True)
class Case:
    """One hostile input: ``source`` is bytes, a numpy array or a path; ``expect`` is the
    outcome it must have: "ok", "error" (an ImageError), "too_large" (ImageTooLargeError) or
    "ok_or_error" (either, e.g. a byte flip inside pixel data)."""

    name: str
    source: object
    expect: str


# -- encodings of the base photo ---------------------------------------------------------------
def base_photo(data: str | None) -> np.ndarray:
    """A 32 x 24 BGR photo: the first Grocery test photo shrunk, else a generated gradient."""
    if data:
        from skulens import load_dataset

        image = cv2.imread(str(load_dataset(data).splits["test"][0].path))
        return cv2.resize(image, (32, 24), interpolation=cv2.INTER_AREA)
    y, x = np.mgrid[0:24, 0:32]
    return np.dstack([x * 8, y * 10, (x + y) * 4]).astype(np.uint8)


def encodings(photo: np.ndarray) -> dict[str, bytes]:
    """The photo in every decodable format (JPEG 2000 needs 64 x 48 to encode at all)."""
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    larger = cv2.resize(photo, (64, 48), interpolation=cv2.INTER_LINEAR)
    enc = {name: cv2.imencode(ext, image, params)[1].tobytes() for name, ext, image, params in [
        ("jpeg", ".jpg", photo, []), ("png", ".png", photo, []), ("bmp", ".bmp", photo, []),
        ("webp", ".webp", photo, [cv2.IMWRITE_WEBP_QUALITY, 80]), ("webp-lossless", ".webp", photo, []),
        ("gif", ".gif", photo, []), ("tiff", ".tiff", photo, []), ("ppm", ".ppm", photo, []),
        ("pgm", ".pgm", gray, []), ("pbm", ".pbm", gray, []), ("pam", ".pam", photo, []),
        ("jp2", ".jp2", larger, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, 200]), ("avif", ".avif", photo, []),
        ("sunraster", ".sr", photo, []),
    ]}
    enc["j2k"] = enc["jp2"][enc["jp2"].find(b"\xff\x4f\xff\x51"):]  # the bare codestream
    enc["tiff-be"] = _tiff_big_endian(enc["tiff"])
    enc["pgm-ascii"] = b"P2\n4 3\n255\n" + b" ".join(b"%d" % v for v in gray[:3, :4].ravel()) + b"\n"
    enc["ppm-ascii"] = b"P3\n2 2\n255\n" + b" ".join(b"%d" % v for v in photo[:2, :2].ravel()) + b"\n"
    enc["pbm-ascii"] = b"P1\n4 2\n0 1 0 1\n1 0 1 0\n"
    return enc


def _tiff_big_endian(little: bytes) -> bytes:
    """A minimal big-endian 8-bit grey TIFF made by hand (OpenCV writes little-endian)."""
    w, h = 8, 6
    pixels = bytes(range(0, 240, 5))[: w * h]
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 3, 1, h), (279, 4, 1, w * h)]
    ifd = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHI", tag, kind, n) + (struct.pack(">HH", v, 0) if kind == 3 else struct.pack(">I", v))
        for tag, kind, n, v in entries) + b"\0\0\0\0"
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + pixels


# -- declaring another size in each format's header ----------------------------------------------
def _tiff_set(data: bytes, width: int, height: int) -> bytes:
    order = "<" if data[:2] == b"II" else ">"
    out = bytearray(data)
    ifd = struct.unpack(order + "I", data[4:8])[0]
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    for e in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind = struct.unpack(order + "HH", data[e:e + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            out[e + 8:e + 12] = (struct.pack(order + "HH", value & 0xFFFF, 0) if kind == 3
                                 else struct.pack(order + "I", value))
    return bytes(out)


def _gif_frame(data: bytes) -> int:
    i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[i] == 0x21:
        i += 2
        while data[i]:
            i += 1 + data[i]
        i += 1
    return i


def declare(fmt: str, data: bytes, width: int, height: int) -> bytes | None:
    """``data`` (an encoding of format ``fmt``) with its header declaring width x height; None
    where the format cannot express it."""
    out = bytearray(data)
    if fmt == "jpeg":
        sof = data.find(b"\xff\xc0")
        out[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    elif fmt == "png":
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif fmt == "bmp":
        out[18:26] = struct.pack("<ii", width, height)
    elif fmt == "webp":
        if max(width, height) > 0x3FFF:
            return None
        out[26:30] = struct.pack("<HH", width, height)
    elif fmt == "webp-lossless":
        if not (1 <= width <= 0x4000 and 1 <= height <= 0x4000):
            return None
        bits = (width - 1) | ((height - 1) << 14) | (int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1))
        out[21:25] = bits.to_bytes(4, "little")
    elif fmt == "webp-vp8x":  # an extended header (a canvas size) in front of the lossy frame
        if not (1 <= width <= 1 << 24 and 1 <= height <= 1 << 24):
            return None
        chunk = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little") + \
            (height - 1).to_bytes(3, "little")
        body = b"WEBP" + chunk + data[12:]
        return b"RIFF" + struct.pack("<I", len(body)) + body
    elif fmt == "gif":
        out[6:10] = struct.pack("<HH", width, height)
    elif fmt == "gif-frame":  # the screen stays small, the first frame's descriptor is large
        at = _gif_frame(data)
        out[at + 5:at + 9] = struct.pack("<HH", width, height)
    elif fmt in ("tiff", "tiff-be"):
        return _tiff_set(data, width, height)
    elif fmt.split("-")[0] in ("ppm", "pgm", "pbm"):  # binary or "-ascii"
        magic, bitmap = data[:2], fmt.startswith("pbm")
        body = data.split(b"\n", 2 if bitmap else 3)[-1]
        head = magic + b"\n%d %d\n" % (width, height) + (b"" if bitmap else b"255\n")
        return head + body
    elif fmt == "pam":
        head, body = data.split(b"ENDHDR\n", 1)
        lines = [b"WIDTH %d" % width if ln.startswith(b"WIDTH") else b"HEIGHT %d" % height
                 if ln.startswith(b"HEIGHT") else ln for ln in head.split(b"\n")]
        return b"\n".join(lines) + b"ENDHDR\n" + body
    elif fmt in ("jp2", "j2k"):
        soc = data.find(b"\xff\x4f\xff\x51")
        out[soc + 8:soc + 24] = struct.pack(">IIII", width, height, 0, 0)
        ihdr = data.find(b"ihdr")
        if fmt == "jp2" and ihdr >= 0:
            out[ihdr + 4:ihdr + 12] = struct.pack(">II", height, width)
    elif fmt == "avif":
        at = data.find(b"ispe")
        out[at + 8:at + 16] = struct.pack(">II", width, height)
    elif fmt == "sunraster":
        out[4:12] = struct.pack(">II", width, height)
    else:
        return None
    return bytes(out)


# -- the cases -----------------------------------------------------------------------------------
def cases(photo: np.ndarray, tmp: Path) -> list[Case]:
    enc = encodings(photo)
    out: list[Case] = []
    bomb_formats = ["jpeg", "png", "bmp", "webp", "webp-lossless", "webp-vp8x", "gif", "gif-frame", "tiff",
                    "tiff-be", "ppm", "pgm", "pbm", "pam", "jp2", "j2k", "avif", "sunraster"]
    for fmt in bomb_formats:
        base = enc["webp"] if fmt == "webp-vp8x" else enc["gif"] if fmt == "gif-frame" else enc[fmt]
        for label, (w, h), expect in [("20000x20000", (20000, 20000), TOO_LARGE),
                                      ("16383x16383", (16383, 16383), TOO_LARGE),
                                      ("1x30000", (1, 30000), TOO_LARGE), ("30000x1", (30000, 1), TOO_LARGE),
                                      ("0x0", (0, 0), ERROR), ("6000x6000", (6000, 6000), ANY)]:
            data = declare(fmt, base, w, h)
            if data is not None:
                out.append(Case(f"{fmt} declares {label}", data, expect))
    for fmt, data in enc.items():
        out.append(Case(f"{fmt} valid", data, OK))
        for frac in (0.3, 0.6, 0.9):
            out.append(Case(f"{fmt} truncated at {int(frac * 100)} %", data[:int(len(data) * frac)], ERROR))
        rng = np.random.default_rng(len(data))
        for k in range(2):
            flipped = bytearray(data)
            for pos in rng.integers(len(data) // 4, len(data), size=4):
                flipped[pos] ^= 1 << int(rng.integers(8))
            out.append(Case(f"{fmt} 4 bit flips #{k}", bytes(flipped), ANY))
    for fmt in ("jpeg", "png", "gif", "webp", "bmp", "tiff", "avif"):
        out.append(Case(f"{fmt} with 200 trailing bytes", enc[fmt] + bytes(range(200)), OK))
    for cut in (0.4, 0.7):  # cut short, then closed with an end marker: libjpeg fills in grey, silently
        out.append(Case(f"jpeg truncated at {int(cut * 100)} % + EOI", enc["jpeg"][:int(len(enc["jpeg"]) * cut)]
                        + b"\xff\xd9", ERROR))
    out += [Case("16-bit PNG", cv2.imencode(".png", photo.astype(np.uint16) * 257)[1].tobytes(), ERROR),
            Case("16-bit TIFF", cv2.imencode(".tiff", photo.astype(np.uint16) * 257)[1].tobytes(), ERROR),
            Case("PFM (float)", cv2.imencode(".pfm", photo.astype(np.float32) / 255)[1].tobytes()[:MAX_INPUT_BYTES],
                 ERROR),
            Case("Radiance HDR", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n" + b"\0" * 64, ERROR),
            Case("OpenEXR magic", b"\x76\x2f\x31\x01" + b"\0" * 200, ERROR),
            Case("BigTIFF", b"II+\x00\x08\x00\x00\x00" + b"\0" * 64, ERROR),
            Case("TIFF with 9 samples", b"II*\x00\x08\x00\x00\x00\x03\x00" + struct.pack(
                "<HHIHHHHIHHHHIHH", 256, 3, 1, 8, 0, 257, 3, 1, 8, 0, 277, 3, 1, 9, 0)[:36] + b"\0" * 40, ERROR),
            Case("empty bytes", b"", ERROR), Case("one byte", b"\xff", ERROR),
            Case("JPEG SOI only", b"\xff\xd8\xff", ERROR), Case("JPEG SOI+EOI", b"\xff\xd8\xff\xd9", ERROR),
            Case("PNG signature only", b"\x89PNG\r\n\x1a\n", ERROR),
            Case("random bytes", np.random.default_rng(0).bytes(2048), ERROR),
            Case("text", b"hello, this is not an image\n" * 20, ERROR),
            Case("PDF header", b"%PDF-1.7\n" + b"\0" * 100, ERROR),
            Case("ZIP header", b"PK\x03\x04" + b"\0" * 100, ERROR),
            Case("HTML", b"<!doctype html><html><body><img src=x></body></html>", ERROR),
            Case("SVG", b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>', ERROR),
            Case("GIF header only", b"GIF89a", ERROR),
            Case("PNM without size", b"P6\n# no size\n", ERROR)]
    out += [Case(f"array {label}", array, expect) for label, array, expect in [
        ("1x200000x3", np.zeros((1, 200000, 3), np.uint8), TOO_LARGE),
        ("100000x1", np.zeros((100000, 1), np.uint8), TOO_LARGE),
        ("0x0x3", np.zeros((0, 0, 3), np.uint8), ERROR), ("5x5x2", np.zeros((5, 5, 2), np.uint8), ERROR),
        ("float32", photo.astype(np.float32), ERROR), ("int16", photo.astype(np.int16), ERROR),
        ("bool", np.ones((8, 8), bool), ERROR), ("4-d", photo[None], ERROR), ("1-d", np.zeros(64, np.uint8), ERROR),
        ("object", np.array([[None]], dtype=object), ERROR),
        ("non-contiguous", photo[::2, ::3], OK), ("Fortran order", np.asfortranarray(photo), OK),
        ("read-only", _read_only(photo), OK), ("BGRA", cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA), OK),
        ("gray HxWx1", photo[:, :, :1], OK), ("1x1", photo[:1, :1], OK), ("60x1 (aspect 60)", photo[:1, :1].repeat(60, 0), OK)]]
    fifo = tmp / "fifo"
    if hasattr(os, "mkfifo") and not fifo.exists():
        os.mkfifo(fifo)
    (tmp / "dir.jpg").mkdir(exist_ok=True)
    out += [Case("path: missing file", str(tmp / "missing.jpg"), ERROR),
            Case("path: a folder", str(tmp / "dir.jpg"), ERROR),
            Case("path: name over 255 bytes", str(tmp / ("x" * 300 + ".jpg")), ERROR),
            Case("path: NUL byte", str(tmp / "a\0b.jpg"), ERROR),
            Case("path: /dev/zero", "/dev/zero", ERROR)]
    if fifo.exists():
        out.append(Case("path: a FIFO", str(fifo), ERROR))
    return [c for c in out if not isinstance(c.source, bytes) or len(c.source) <= MAX_INPUT_BYTES]


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


# -- running them --------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would carry the parent's peak across fork+exec)."""
    from skulens.internal import proc_bytes

    peak = proc_bytes("VmHWM")
    if peak is not None:
        return peak / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(model: str, data: str | None, tmp: Path) -> dict:
    """Every case through ``ImageClassifier.classify``; the report (see the module docstring)."""
    from skulens import ImageClassifier, ImageTooLargeError, SkulensError

    tmp.mkdir(parents=True, exist_ok=True)
    all_cases = cases(base_photo(data), tmp)
    rows = []
    with ImageClassifier.from_path(model) as clf:
        clf.classify(all_cases[0].source if isinstance(all_cases[0].source, np.ndarray) else base_photo(data))
        rss0 = _peak_rss_mb()
        for case in all_cases:
            t0 = time.perf_counter()
            try:
                clf.classify(case.source)
                outcome, message = OK, ""
            except ImageTooLargeError as exc:
                outcome, message = TOO_LARGE, str(exc)
            except SkulensError as exc:
                outcome, message = ERROR, str(exc)
            except Exception as exc:  # noqa: BLE001 - the very thing this suite looks for
                outcome, message = f"raw {type(exc).__name__}", str(exc)
            seconds = time.perf_counter() - t0
            expected = case.expect == outcome or (case.expect == ANY and outcome in (OK, ERROR, TOO_LARGE))
            rows.append({"case": case.name, "expect": case.expect, "outcome": outcome, "passed": expected,
                         "seconds": round(seconds, 5), "peak_rss_mb": round(_peak_rss_mb(), 1),
                         "bytes": len(case.source) if isinstance(case.source, bytes) else None,
                         "message": message[:300]})
    return {"model": model, "cases": len(rows), "failed": [r for r in rows if not r["passed"]],
            "max_seconds": max(r["seconds"] for r in rows), "rss_before_mb": round(rss0, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "budget": {"rss_mb": BUDGET_RSS_MB, "seconds": BUDGET_SECONDS},
            "rows": rows}


def markdown(result: dict) -> str:
    slow = sorted(result["rows"], key=lambda r: -r["seconds"])[:5]
    lines = [f"# Hostile inputs: {result['model']}", "",
             f"{result['cases']} cases, {len(result['failed'])} failed; slowest {result['max_seconds']:.3f} s "
             f"(budget {BUDGET_SECONDS} s); peak RSS {result['peak_rss_mb']:.0f} MB after all of them "
             f"({result['rss_before_mb']:.0f} MB after loading the model; budget {BUDGET_RSS_MB} MB).", "",
             "| slowest cases | outcome | s |", "|---|---|---:|"]
    lines += [f"| {r['case']} | {r['outcome']} | {r['seconds']:.4f} |" for r in slow]
    if result["failed"]:
        lines += ["", "| failed case | expected | got | message |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['expect']} | {r['outcome']} | {r['message'][:120]} |" for r in result["failed"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an exported classifier .onnx (the tiny test models will do)")
    p.add_argument("--data", default=None, help="the Grocery Store dataset folder (the base photo)")
    p.add_argument("--out", default=None, help="write hostile.json and hostile.md here (default: print JSON)")
    p.add_argument("--tmp", default=None, help="scratch folder for the path cases (default: a temp folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="skulens-hostile-") as scratch:
        result = run(args.model, args.data, Path(args.tmp or scratch))
    if args.out:
        from skulens.internal import atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "hostile.json", json.dumps(result, indent=2))
        atomic_write_text(out / "hostile.md", markdown(result))
        print(markdown(result))
    else:
        json.dump(result, sys.stdout)
    within = result["peak_rss_mb"] <= BUDGET_RSS_MB and result["max_seconds"] <= BUDGET_SECONDS
    return 0 if not result["failed"] and within else 1


if __name__ == "__main__":
    sys.exit(main())
