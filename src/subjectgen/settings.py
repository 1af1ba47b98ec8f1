"""Allowed ranges for numeric settings, declared once beside each setting and checked before any work.

A dataclass field declares its range with `setting(default, Bound(...))`; `check_settings(obj)` checks
every such field of an instance (the Python API), and `arg_type(cls, name)` turns the same declaration
into an argparse `type=` (the CLI), so a value out of range is a one-line error naming the flag and the
range before anything is imported or written. A method added later is checked by the same code.
Stdlib only: the CLI parses before torch is imported.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from .errors import UserError


@dataclass(frozen=True)
class Bound:
    """A closed or half-open interval of ints or floats; floats must also be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False     # low itself not allowed (e.g. a learning rate > 0)
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_show(self.low)}, {_show(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_show(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_show(self.high)}"
        return kind

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def check(self, flag: str, value: Any) -> None:
        if not self.allows(value):
            raise UserError(f"{flag} must be {self.describe()}, got {value!r}")


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


AT_LEAST_1 = Bound(low=1, integer=True)
NON_NEGATIVE_INT = Bound(low=0, integer=True)
POSITIVE = Bound(low=0, low_open=True)
NON_NEGATIVE = Bound(low=0)
FRACTION_BELOW_1 = Bound(low=0, high=1, high_open=True)
SEED = Bound(low=0, high=2**32 - 1, integer=True)  # numpy's and torch's seed range (seed * 1000 stays in it for torch)
SAMPLER_STEPS = Bound(low=1, high=1000, integer=True)  # a sampler step per training timestep at most
ANY_FINITE = Bound()


def setting(default: Any = None, bound: Bound | None = None, help: str = "", flag: str | None = None,
            choices: tuple | None = None, metavar: str | None = None, factory: Callable | None = None) -> Any:
    """A dataclass field that is also a command-line flag: its range, help text, flag name and choices live
    here, beside the setting, and the CLI's parsers are built from them."""
    metadata = {"bound": bound, "help": help, "flag": flag, "choices": choices, "metavar": metavar}
    metadata = {k: v for k, v in metadata.items() if v not in (None, "")}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def bound_of(cls: type, name: str) -> Bound | None:
    """A setting's range (None: one without, a switch or a name)."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("bound")
    raise KeyError(f"{cls.__name__} has no field {name}")


def choices_of(cls: type, name: str) -> tuple | None:
    """A setting's choices (None: one without)."""
    return next(f.metadata.get("choices") for f in fields(cls) if f.name == name)


def flag_of(f) -> str:
    """A setting's command-line flag: the one it declares, else --its-name."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def check_settings(obj: Any, bounds: dict | None = None) -> None:
    """A one-line UserError for the first declared-range field of `obj` out of its range or its choices (`bounds`: a
    method's own range for a field, where it differs from the declared one)."""
    for f in fields(obj):
        bound = (bounds or {}).get(f.name, f.metadata.get("bound"))
        value, choices = getattr(obj, f.name), f.metadata.get("choices")
        if bound is not None and value is not None:
            bound.check(flag_of(f), value)
        if choices is not None and value is not None and value not in choices:
            raise UserError(f"{flag_of(f)} must be one of {', '.join(choices)}, got {value!r}")


def number_type(bound: Bound) -> Callable[[str], float]:
    """An argparse type: parse the text as the bound's kind, then check the range."""

    def parse(text: str):
        try:
            value = int(text) if bound.integer else float(text)
        except ValueError:
            value = None
        if value is None or not bound.allows(value):  # argparse prefixes "argument --flag: "
            raise argparse.ArgumentTypeError(f"must be {bound.describe()}, got {text!r}")
        return value

    parse.__name__ = "integer" if bound.integer else "number"
    return parse


def arg_type(cls: type, name: str) -> Callable[[str], float]:
    """The argparse type of a dataclass field's declared range."""
    return number_type(bound_of(cls, name))
