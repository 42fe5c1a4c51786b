"""The ``skulens`` command line: a thin argparse layer over the Python API.

Sub-commands live in small modules listed in ``_COMMAND_MODULES``; each exposes
``register(subparsers)`` and imports its heavy dependencies (torch, ...) only when run, so
``skulens predict`` never loads torch. The helpers below turn the usual slips (a checkpoint
where a model belongs, a folder or pattern of photos) into clear messages or inputs.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import logging
import os
import sys
from pathlib import Path

from skulens import ModelError, SkulensError, __version__

_COMMAND_MODULES = [f"skulens.cli.{name}" for name in ("_pipeline", "_gallery", "_bench", "_serve", "_gan", "_batch")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skulens", description="Product image recognition: train, "
                                     "export to INT8 ONNX, classify anywhere.")
    parser.add_argument("--version", action="version", version=f"skulens {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    # our loggers at the asked level; third-party ones (e.g. onnxruntime's quantizer, which logs
    # every rescaled weight on the root logger) at warnings and above; the service's uvicorn as ours
    logging.basicConfig(level=max(level, logging.WARNING), format="%(levelname)s %(name)s: %(message)s")
    for ours in ("skulens", "uvicorn"):
        logging.getLogger(ours).setLevel(level)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch._export", "torch.export", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except SkulensError as exc:
        print(f"skulens: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `skulens predict ... | head`: the reader has what it wanted
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("skulens: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of the output still
    buffered for the closed pipe does not print 'Exception ignored ... BrokenPipeError'."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass


# -- input checks shared by the commands --------------------------------------------------------
def file_kind(path) -> str | None:
    """What a file is, from its first bytes: "checkpoint" (a PyTorch zip or pickle file, as
    ``skulens train`` writes), "onnx" (an ONNX protobuf), "image" (JPEG, PNG, BMP, WebP, TIFF),
    "other", or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "checkpoint"
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*")) or \
            (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
        return "image"
    # ModelProto starts with field 1 (ir_version, a small varint), then another field's tag
    if len(head) > 2 and head[0] == 0x08 and head[1] < 0x80 and head[2] & 0x07 in (0, 2) and head[2] >> 3 >= 2:
        return "onnx"
    return "other"


def require_model(path) -> None:
    """ModelError with the fix when ``path`` (an argument that must be an exported .onnx) is
    a training checkpoint. Other problems are left to the runtime's own messages."""
    if os.path.isdir(path):
        raise ModelError(f"{path}: this is a folder, not an exported model file; check the order of the "
                         "arguments (the model comes before the images, see --help)")
    kind = file_kind(path)
    if kind == "checkpoint":
        p = Path(path)  # runs/grocery/best.pt -> grocery.onnx
        out = f"{p.parent.name if p.stem in ('best', 'last') and p.parent.name else p.stem}.onnx"
        raise ModelError(f"{path}: this is a training checkpoint, not an exported model; export it first: "
                         f"skulens export {path} --out {out} (add --int8 --data DATASET for INT8)")
    if kind == "image":
        raise ModelError(f"{path}: this is an image, not an exported model; check the order of the "
                         "arguments (the model comes before the images, see --help)")


def require_checkpoint(path, command: str = "export",
                       takes: str = "the best.pt of skulens train (or last.pt of skulens gan train)") -> None:
    """ModelError with the fix when ``path`` (an argument of ``skulens COMMAND``, which ``takes``
    a training checkpoint) is an exported ONNX model or missing."""
    kind = file_kind(path)
    if kind is None:
        raise ModelError(f"{path}: no such checkpoint file (skulens train writes RUN/best.pt, "
                         "skulens gan train RUN/last.pt)")
    if kind == "onnx":
        raise ModelError(f"{path}: this is an exported ONNX model, not a checkpoint; {command} takes {takes}. "
                         f"The model is ready to use: skulens predict {path} IMAGE")


def expand_images(items, suffixes) -> list[tuple[str, str | None]]:
    """IMAGE arguments -> (image path, error or None) in order: a folder gives its image files
    (recursively, by extension, sorted, hidden ones skipped); a glob pattern (``*``, ``?``,
    ``[...]``, ``**``) that names no existing file gives its matching image files; anything
    else is kept as given (a missing file is reported when it is read)."""
    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            out += [(f, None) for f in found] or [(item, "no image files in this folder (looked for "
                                                   f"{', '.join(sorted(suffixes))}, in sub-folders too)")]
        elif not path.exists() and glob.has_magic(item):
            files = [f for f in glob.glob(item, recursive=True) if os.path.isfile(f)]
            found = sorted(f for f in files if Path(f).suffix.lower() in suffixes)
            out += [(f, None) for f in found] or [(item, f"{len(files)} files match this pattern, none with an "
                                                   "image extension" if files else "no file matches this pattern")]
        else:
            out.append((item, None))
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
