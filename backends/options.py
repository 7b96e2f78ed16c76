"""Mount options (`-o key=value,flag`) as a backend sees them, and the one-line error
every backend raises when a source cannot be mounted."""
from __future__ import annotations

import os

#: "0" in the daemon's environment: nothing is listed or learned ahead of a walker (overlay
#: and copick listings, FSDB attributes): what a walk finds ready is then not up to the scheduler;
#: a number: the seconds a walker waits for a listing under way (`list_ahead_wait`)
LIST_AHEAD_ENV = "SCOPEFS_LIST_AHEAD"


def lists_ahead() -> bool:
    """Whether work may be done ahead of a walker (`LIST_AHEAD_ENV`: "0", none)."""
    return os.environ.get(LIST_AHEAD_ENV) != "0"


def list_ahead_wait(default: float) -> float:
    """The seconds a walker waits at most for a listing being made ahead: `LIST_AHEAD_ENV`
    where it is a number of them (tests on a loaded machine), else `default`."""
    try:
        return float(os.environ.get(LIST_AHEAD_ENV, ""))
    except ValueError:
        return default


class MountError(Exception):
    """The source cannot be mounted; the message is one line for the user."""


_TRUE = {"1", "yes", "true", "on", ""}
_FALSE = {"0", "no", "false", "off"}


class Options:
    """Typed access to options; `finish()` rejects any option nobody asked for."""

    def __init__(self, values: dict[str, str] | None = None):
        self._values = dict(values or {})
        self._used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def _raw(self, key: str):
        self._used.add(key)
        return self._values.get(key)

    def str(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        value = self._raw(key)
        if value is None:
            return default
        if choices and value not in choices:
            raise MountError(f"option {key}={value}: choose one of {', '.join(choices)}")
        return value

    def int(self, key: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
        number = self._number(key, int, "a whole number")
        if number is None:
            return default
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise MountError(f"option {key}={self._values[key]}: must be between {minimum} and {maximum}")
        return number

    def float(self, key: str, default: float, minimum: float = 0.0) -> float:
        number = self._number(key, float, "a number")
        if number is None:
            return default
        if number < minimum:
            raise MountError(f"option {key}={self._values[key]}: must be at least {minimum}")
        return number

    def _number(self, key: str, convert, what: str):
        """The option's value as `convert` makes it, None if it is not given."""
        value = self._raw(key)
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError:
            raise MountError(f"option {key}={value}: not {what}") from None

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._raw(key)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise MountError(f"option {key}={value}: say yes or no")

    def finish(self) -> None:
        """Refuse options nobody asked for."""
        unknown = sorted(set(self._values) - self._used)
        if unknown:
            raise MountError(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")


def parse_option_string(text: str) -> dict[str, str]:
    """'ro,image_format=tiff' -> {'ro': '', 'image_format': 'tiff'} (later ones win)."""
    values = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        values[key.strip()] = value.strip()
    return values
