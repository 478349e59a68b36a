"""Configuration as dataclasses, and argparse parsers built from them.

Each CLI declares its options once, as a dataclass whose fields carry `help` (and optionally `choices`,
`positional`, `metavar`) in their metadata; `build_parser` turns that into argparse, and `from_namespace`
turns the parsed namespace back into the dataclass. Validation of values lives in each dataclass's
`validate()`, which raises UsageError naming the fields as parameters (the CLI shows them as flags).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Sequence, TypeVar

from rnnlm.errors import flag

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, choices: typing.Sequence[Any] | None = None,
           positional: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line option, `--name-with-dashes` (rnnlm.errors.flag)."""
    meta = {"help": help, "choices": choices, "positional": positional, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> type:
    """The type of an annotation such as `int`, `float | None` or `Optional[str]`."""
    args = typing.get_args(annotation)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None))
    return annotation


class _DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows "(default: X)" after an option's help, unless X is None or the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text or action.option_strings == []:
            return text
        return text + " (default: %(default)s)"


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass `cls` (defaults shown in --help)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_DefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        kind = _base_type(hints[field.name])
        default = None if field.default is dataclasses.MISSING else field.default
        if meta.get("positional"):
            parser.add_argument(field.name, type=kind, help=meta["help"], metavar=meta.get("metavar"))
            continue
        name = flag(field.name)
        if kind is bool:
            parser.add_argument(name, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=default, help=meta["help"])
        else:
            parser.add_argument(name, dest=field.name, type=kind, default=default, choices=meta.get("choices"),
                                help=meta["help"], metavar=meta.get("metavar"))
    return parser


def from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """The dataclass `cls` filled from a parsed namespace (fields without an option keep their default)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Names of the options given in argv, as opposed to those left at their defaults."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
