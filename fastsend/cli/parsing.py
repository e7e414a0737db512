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
from typing import Any, NoReturn

from fastsend.config import check_base_url

__all__ = [
    "EXIT_INVALID",
    "Parser",
    "base_url",
    "bounded_int",
    "nonnegative_number",
    "positive_seconds",
    "unknown_option_message",
]

EXIT_INVALID = 2

_INVALID_CHOICE = re.compile(
    r"argument (?P<option>\S+): invalid choice: (?P<value>'[^']*'|\S+) \(choose from (?P<choices>.*)\)"
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, exit status 2, with the closest choice.

    Abbreviated options are not taken: ``--api-key`` would otherwise silently mean ``--api-key-file``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {_reworded(message)} ({self.prog} --help lists the options)", file=sys.stderr)
        sys.exit(EXIT_INVALID)

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
