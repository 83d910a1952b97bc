"""The vocabulary of argument checks: each returns the value it accepts or raises a ConfigError naming ``key``.

Constructors (models, data modules, callbacks) call these with their own argument's config key, e.g.
``checks.positive_int(f"{self.key_prefix}.latent_dim", latent_dim)``; the message reads
``model.latent_dim=0: expected a positive integer``. ``genexp.runtime.build.instantiate`` adds the config prefix it
knows to an error whose key is a bare argument name (a user's own model may raise ``ConfigError("width", ...)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from genexp.runtime.errors import ConfigError


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for an ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_at_least(key: str, value: Any, minimum: int, allow_none: bool = False) -> Any:
    """An integer >= ``minimum`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return value
    if not is_int(value) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(key, value, expected + (" or null" if allow_none else ""))
    return value


def positive_int(key: str, value: Any) -> int:
    """An integer >= 1."""
    return int_at_least(key, value, 1)


def number_at_least(key: str, value: Any, minimum: float, allow_none: bool = False) -> Any:
    """A number >= ``minimum`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return value
    if not is_number(value) or value < minimum:
        raise ConfigError(key, value, f"a number >= {minimum:g}" + (" or null" if allow_none else ""))
    return value


def positive_number(key: str, value: Any, allow_none: bool = False) -> Any:
    """A number > 0 (or None when ``allow_none``)."""
    if value is None and allow_none:
        return value
    if not is_number(value) or not value > 0:
        raise ConfigError(key, value, "a positive number" + (" or null" if allow_none else ""))
    return value


def in_range(
    key: str, value: Any, low: float, high: float, what: str = "a number", allow_none: bool = False
) -> Any:
    """A number in ``[low, high)``."""
    if value is None and allow_none:
        return value
    if not is_number(value) or not low <= value < high:
        raise ConfigError(key, value, f"{what} in [{low:g}, {high:g})" + (" or null" if allow_none else ""))
    return value


def fraction(key: str, value: Any, open_low: bool = False) -> float:
    """A fraction in [0, 1) (``open_low``: in (0, 1))."""
    low_ok = value > 0 if open_low else value >= 0
    if not is_number(value) or not (low_ok and value < 1):
        raise ConfigError(key, value, "a fraction in (0, 1)" if open_low else "a fraction in [0, 1)")
    return value


def one_of(key: str, value: Any, options: Iterable[Any], why: str = "") -> Any:
    """One of ``options`` (the message lists them)."""
    options = list(options)
    if value not in options:
        raise ConfigError(key, value, f"one of {options}{why}")
    return value


def boolean(key: str, value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def regexes(key: str, value: Sequence[str] | str | None) -> list[str]:
    """A regular expression or a list of them (None: none), each compiled once to check it."""
    if value is None:
        return []
    patterns = [value] if isinstance(value, str) else list(value)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(key, value, "a list of regular expressions over module names")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(key, pattern, f"a valid regular expression ({err})") from None
    return patterns
