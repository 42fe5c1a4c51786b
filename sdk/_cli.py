"""The ``skulens`` command line: a thin argparse layer over the Python API.

Sub-commands live in small modules listed in ``_COMMAND_MODULES``; each exposes
``register(subparsers)`` and imports its heavy dependencies (torch, ...) only when run, so
``skulens predict`` never loads torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import typing

from ._errors import SkulensError
from ._version import __version__

_COMMAND_MODULES = ["sdk._cli_pipeline", "sdk._cli_gallery", "sdk._cli_bench", "sdk.serve._command", "sdk._cli_gan"]


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=(), positional=()) -> None:
    """One ``--flag-name`` per field of dataclass ``cls`` with a scalar type: CLI flags and
    Python arguments cannot drift apart."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        if type(None) in args:  # Optional[X]
            tp = next(a for a in args if a is not type(None))
        choices = None
        if typing.get_origin(tp) is typing.Literal:  # Literal["a", "b"]: a str flag with choices
            choices, tp = typing.get_args(tp), str
        if tp not in (int, float, str, bool):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        name = f.name if f.name in positional else "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"(default: {default})")
        elif f.name in positional:
            parser.add_argument(name, type=tp)
        else:
            parser.add_argument(name, type=tp, default=default, required=default is None and f.default is dataclasses.MISSING,
                                choices=choices, help=f"(default: {default})")


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


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
    for ours in ("sdk", "training", "export", "runtime_bench", "uvicorn"):
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
