"""Config dataclasses as the one description of a job: CLI flags and dict round trips (torch-free).

Every job takes a config dataclass (``train(TrainConfig)``, ``export(ExportConfig)``,
``run_benchmark(BenchConfig)``, ``serve(ServeConfig)``). The CLI generates its flags from the
fields (help text from ``field(metadata={"help": ...})``), and configs are saved beside results
as plain JSON (``config_to_dict``) and read back (``config_from_dict``).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing


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


def config_to_dict(cfg) -> dict:
    """A config dataclass as plain JSON-able data (nested dataclasses become dicts)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls, data: dict, *, strict: bool = True):
    """Build config dataclass ``cls`` from ``config_to_dict`` output (nested dataclass fields are
    rebuilt from their dicts; lists become tuples where the field's default is a tuple). Unknown
    keys raise a ValueError naming them (``strict=False`` drops them: a config saved by a newer
    version)."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and strict:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        tp = hints[name]
        inner = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
        sub = next((a for a in inner if dataclasses.is_dataclass(a)), None)
        if sub is not None and isinstance(value, dict):
            value = config_from_dict(sub, value, strict=strict)
        elif isinstance(value, list) and (typing.get_origin(inner[0]) is tuple
                                          or isinstance(fields[name].default, tuple)):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
