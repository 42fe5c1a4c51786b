"""The ``skulens`` command line: a thin argparse layer over the Python API.

Sub-commands live in small modules listed in ``_COMMAND_MODULES``; each exposes
``register(subparsers)`` and imports its heavy dependencies (torch, ...) only when run, so
``skulens predict`` never loads torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from skulens import SkulensError, __version__

_COMMAND_MODULES = [f"skulens.cli.{name}" for name in ("_pipeline", "_gallery", "_bench", "_serve", "_gan")]


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
        return int(args.func(args) or 0)
    except SkulensError as exc:
        print(f"skulens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skulens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
