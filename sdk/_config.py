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


def option(default=dataclasses.MISSING, help: str = "", *, default_factory=dataclasses.MISSING, choices=None):
    """A config field with its help text (and, for a str field, its allowed values): the one
    place a flag is explained, shown by ``--help`` and read by :func:`add_dataclass_flags`.

        epochs: int | None = option(None, "passes over the training split (default: the recipe's)")
    """
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=(), positional=()) -> None:
    """One ``--flag-name`` per field of dataclass ``cls`` with a scalar type: CLI flags and
    Python arguments cannot drift apart. Help comes from the field's ``option(help=...)``; a
    ``Literal`` type or ``option(choices=...)`` lists the allowed values (checked at parse time)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        if type(None) in args:  # Optional[X]
            tp = next(a for a in args if a is not type(None))
        choices = f.metadata.get("choices")
        if typing.get_origin(tp) is typing.Literal:  # Literal["a", "b"]: a str flag with choices
            choices, tp = typing.get_args(tp), str
        if tp not in (int, float, str, bool):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        name = f.name if f.name in positional else "--" + f.name.replace("_", "-")
        text = field_help(f)
        shown = f"{text} " if text else ""
        if tp is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{shown}(default: {default})")
        elif f.name in positional:
            parser.add_argument(name, type=tp, help=text or None)
        else:
            required = default is None and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            parser.add_argument(name, type=tp, default=default, required=required, choices=choices,
                                metavar="{" + ",".join(map(str, choices)) + "}" if choices else None,
                                help=shown + ("(required)" if required else f"(default: {default})"))


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
