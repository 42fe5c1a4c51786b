"""`skulens ... --help` explains every flag: each option and positional of every sub-command
(nested ones too) has help text of its own, beyond the generated "(default: X)"."""
from __future__ import annotations

import argparse
import re

import pytest

from skulens.cli import build_parser

# Flags whose help text another change still owes (the config belongs to someone else); the
# lead empties this list as they land. Each entry: (sub-command path, first option string or dest).
NOT_YET_EXPLAINED = {
    ("bench", flag) for flag in (
        "--data", "--checkpoint", "--rounds", "--round-time", "--warmup-time", "--eval-split",
        "--eval-limit", "--top-k", "--int8-min-agreement", "--export-check", "--profile", "--charts",
        "--baseline", "--tolerance", "--accuracy-tolerance-pp", "--out", "--seed", "--cold-start-repeats")
}
_GENERATED = re.compile(r"\s*\((default: .*|required)\)\s*$", re.S)


def _parsers(parser, path=()):
    """(sub-command path, parser) for the root and every sub-command, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action._choices_actions


def _explained(help_text) -> bool:
    return bool(help_text) and help_text != argparse.SUPPRESS and bool(_GENERATED.sub("", help_text).strip())


def _name(action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def test_every_option_and_positional_of_every_subcommand_has_help():
    missing, seen = [], set()
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            key = (" ".join(path), _name(action))
            seen.add(key)
            if not _explained(action.help) and key not in NOT_YET_EXPLAINED:
                missing.append(f"skulens {key[0]} {key[1]}: {action.help!r}")
        for choice in _subcommands(parser):
            if not _explained(choice.help):
                missing.append(f"skulens {' '.join(path)} {choice.dest}: the sub-command has no help")
    assert not missing, "flags without help text:\n" + "\n".join(missing)
    # the allow-list only names flags that exist and still lack help: it shrinks, never rots
    stale = sorted(k for k in NOT_YET_EXPLAINED if k not in seen)
    assert not stale, f"NOT_YET_EXPLAINED names flags that no longer exist: {stale}"


def test_allow_listed_flags_still_lack_help():
    parsers = dict(_parsers(build_parser()))
    explained = sorted((cmd, flag) for cmd, flag in NOT_YET_EXPLAINED
                       for a in parsers[tuple(cmd.split())]._actions
                       if _name(a) == flag and _explained(a.help))
    assert not explained, f"these flags have help now: remove them from NOT_YET_EXPLAINED: {explained}"


@pytest.mark.parametrize("argv,shown", [
    (["predict"], ["--smoothing {none,majority,mean}", "majority = the most frequent top-1",
                   "folders (searched recursively"]),
    (["eval"], ["--out DIR", "confusion.csv/.png"]),
    (["gan", "train"], ["--channels {1,3}", "DiffAugment"]),
    (["serve"], ["--max-delay-ms", "SKULENS_API_TOKEN", "/docs"]),
])
def test_help_lists_choices_and_explains(argv, shown, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for snippet in shown:
        assert snippet in text, f"skulens {' '.join(argv)} --help lacks {snippet!r}"


def test_choices_are_checked_at_parse_time(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["predict", "m.onnx", "x.jpg", "--smoothing", "median"])
    assert exit_.value.code == 2
    assert "invalid choice: 'median'" in capsys.readouterr().err
