"""The command line's parser: every refusal one line naming the option, with a did-you-mean, and the
value types that check a number or a URL where it is typed.

``argparse`` prints its usage and then the error; a newcomer needs the error, on one line, in the
same form as the others (``error: --option: value rule``). ``suggest_on_error`` only exists from
Python 3.14, so the closest option or choice is found here with ``difflib``.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fastsend.config import check_base_url
from fastsend.events import ValidationError

__all__ = [
    "Parser",
    "UsageError",
    "base_url",
    "bounded_int",
    "nonnegative_number",
    "parse",
    "positive_seconds",
    "read_key_file",
    "unknown_option_message",
]

_INVALID_CHOICE = re.compile(
    r"argument (?P<option>\S+): invalid choice: (?P<value>'[^']*'|\S+) \(choose from (?P<choices>.*)\)"
)


class UsageError(Exception):
    """The command line was refused: ``str()`` is the one line to show, ``parser`` the (sub)command's."""

    def __init__(self, message: str, parser: Parser) -> None:
        super().__init__(message)
        self.parser = parser


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose refusals raise ``UsageError`` (worded ``--option: value rule``, with the
    closest choice) rather than print a usage block; read arguments with ``parse``.

    Abbreviated options are not taken: ``--api-key`` would otherwise silently mean ``--api-key-file``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(_reworded(message), self)

    def option_strings(self) -> list[str]:
        """Every option this parser takes (``--url``, ``-v`` …)."""
        return [option for action in self._actions for option in action.option_strings]


def _reworded(message: str) -> str:
    """``argument --x: …`` as ``--x: …``, and an invalid choice with the closest one."""
    invalid = _INVALID_CHOICE.match(message)
    if invalid is not None and "maybe you meant" not in message:
        value = invalid["value"].strip("'")
        choices = re.findall(r"'([^']*)'", invalid["choices"]) or invalid["choices"].split(", ")
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        option = "the command" if invalid["option"].startswith("{") else invalid["option"]
        return f"{option}: {value!r} must be one of {', '.join(choices)}{hint}"
    return message.removeprefix("argument ")


def parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, or ``UsageError``; a mistyped option is named first, before the options it left
    missing (``--imgae x`` is a typo before ``--image`` is missing)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args, unknown = parser.parse_known_args(arguments)
    except UsageError as refused:
        typed = _unknown_options(arguments, [parser, refused.parser])
        if not typed:
            raise
        raise UsageError(unknown_option_message(typed, refused.parser), refused.parser) from None
    if unknown:
        used = getattr(args, "parser", parser)
        raise UsageError(unknown_option_message(unknown, used), used)
    return args


def _unknown_options(arguments: list[str], parsers: list[Parser]) -> list[str]:
    known = {option for parser in parsers for option in parser.option_strings()}
    before_positionals = arguments[: arguments.index("--")] if "--" in arguments else arguments
    return [
        argument
        for argument in before_positionals
        if argument.startswith("-") and not _NUMBER.fullmatch(argument) and argument.split("=", 1)[0] not in known
    ]


_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-inf|-nan", re.IGNORECASE)


def unknown_option_message(unknown: Sequence[str], parser: Parser) -> str:
    """What to say about arguments ``parser`` did not recognise: the first one, and the closest option."""
    options = [argument for argument in unknown if argument.startswith("-")]
    if not options:
        return f"{unknown[0]!r} is not an argument of {parser.prog}"
    typed = options[0].split("=", 1)[0]
    close = difflib.get_close_matches(typed, parser.option_strings(), n=1, cutoff=0.7)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{typed}: no such option for {parser.prog}{hint}"


def _typed(accepted: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} must be {accepted}") from None

    return parse


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An integer from ``low`` to ``high``."""

    def check(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError
        return value

    return _typed(f"an integer from {low} to {high}", check)


def _number(accepted: str, accept: Callable[[float], bool]) -> Callable[[str], float]:
    def check(text: str) -> float:
        value = float(text)
        if not accept(value):  # NaN fails too
            raise ValueError
        return value

    return _typed(accepted, check)


positive_seconds = _number("a number of seconds above 0", lambda value: 0 < value < float("inf"))
nonnegative_number = _number("a number ≥ 0", lambda value: 0 <= value < float("inf"))


def base_url(text: str) -> str:
    """A service base URL, checked as the writer checks it: a refusal names the option, once."""
    try:
        return check_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def read_key_file(path: Path | None, option: str = "--api-key-file") -> str | None:
    """The key in the file an option names (surrounding whitespace dropped); None without the option."""
    if path is None:
        return None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValidationError(option, str(path), f"must be a readable UTF-8 file ({reason})") from None
    if not key:
        raise ValidationError(option, str(path), "must hold the key (the file is empty)")
    return key
