"""Small shared validators: one clear line for every bad value, naming it and the fix.

Every check of user input in ltkit (configs, profiles, losses, samplers, the
methods' parameters) goes through these functions, so that a bad value gets the
same kind of answer everywhere::

    real("lr", value, low=0, low_open=True, hint="0.05 for digits-lt, 0.1 for CIFAR")
    integer("epochs", value, low=1)
    choice("loss", value, LOSS_NAMES)

The errors are :class:`InputError` (a ``ValueError``) and :class:`InputTypeError`
(a ``TypeError``); both are :class:`LtkitError`, which the command line turns
into one line and exit status 2.

Method parameters are declared once, as a frozen dataclass whose fields carry
their valid range (:func:`param`); :func:`build_params` checks unknown names,
types and ranges against the declaration and then calls the dataclass's own
``check()`` for rules that join several fields.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

__all__ = ["LtkitError", "InputError", "InputTypeError", "real", "integer", "flag", "choice", "class_counts",
           "param", "build_params", "type_ok"]


class LtkitError(Exception):
    """Base of the errors ltkit raises for bad input (the CLI prints them as one line)."""


class InputError(LtkitError, ValueError):
    """A value is out of range, unknown or inconsistent."""


class InputTypeError(LtkitError, TypeError):
    """A value has the wrong type."""


def _suffix(hint: str) -> str:
    return f" ({hint})" if hint else ""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(value: float) -> str:
    return str(value) if isinstance(value, numbers.Integral) else f"{value:g}"


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"lie in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"be {'>' if low_open else '>='} {_num(low)}"
    return f"be {'<' if high_open else '<='} {_num(high)}"


def _in_range(value: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return not (high is not None and (value > high or (high_open and value == high)))


def real(name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float in the given interval, or an error naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}{_suffix(hint)}.")
    if not math.isfinite(value):
        raise InputError(f"{name}={value!r} must be a finite number{_suffix(hint)}.")
    if not _in_range(value, low, high, low_open, high_open):
        raise InputError(f"{name}={value!r} must {_interval(low, high, low_open, high_open)}{_suffix(hint)}.")
    return float(value)


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None, hint: str = "",
            whole_floats: bool = False) -> int:
    """``value`` as an int in ``[low, high]`` (a float such as ``3.0`` is refused, say 3, unless ``whole_floats``)."""
    if whole_floats and isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        if not real(name, value, hint=hint).is_integer():
            raise InputError(f"{name}={value!r} must be a whole number{_suffix(hint)}.")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}{_suffix(hint)}.")
    if not _in_range(value, low, high, False, False):
        raise InputError(f"{name}={value!r} must {_interval(low, high, False, False)}{_suffix(hint)}.")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0 / 1 / "yes")."""
    if not isinstance(value, bool):
        raise InputTypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")
    return value


def choice(name: str, value: Any, choices: Iterable[Any], hint: str = "") -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}{_suffix(hint)}.")
    return value


def class_counts(counts: Any, name: str = "class_counts", *, min_classes: int = 1,
                 positive: bool = False) -> list[int]:
    """A flat sequence of non-negative integer class sizes (``positive``: every class has an image)."""
    example = "one number of images per class, e.g. [500, 120, 8]"
    try:
        if counts is None or isinstance(counts, (str, bytes, Mapping)):
            raise TypeError
        values = list(counts.tolist() if hasattr(counts, "tolist") else counts)
    except TypeError:
        raise InputTypeError(f"{name} must be a sequence with {example}, got {type(counts).__name__} "
                             f"{_short(counts)}.") from None
    if len(values) < min_classes:
        raise InputError(f"{name} has {len(values)} entr{'y' if len(values) == 1 else 'ies'}; pass the size of each "
                         f"of at least {min_classes} classes, in class-index order.")
    for i, n in enumerate(values):
        if isinstance(n, bool) or not isinstance(n, numbers.Real):
            raise InputTypeError(f"{name}[{i}]={_short(n)} is a {type(n).__name__}, not a number of images; pass "
                                 "numbers, one per class, in a flat list such as [500, 120, 8].")
        if not math.isfinite(n) or n != int(n) or n < 0:
            raise InputError(f"{name}[{i}]={n!r} must be a non-negative whole number (the images of class {i}).")
        if positive and n == 0:
            raise InputError(f"{name}[{i}] is 0: every class needs at least one training image "
                             "(drop empty classes and relabel).")
    return [int(n) for n in values]


# =========================================================================== declared parameters
def param(default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, choices: Sequence[Any] | None = None,
          hint: str = "") -> Any:
    """A dataclass field with its valid range: ``momentum: float = param(0.9, low=0, high=1, high_open=True)``."""
    meta = dict(low=low, high=high, low_open=low_open, high_open=high_open, choices=choices, hint=hint)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_TYPES = {"str": (str,), "int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool,), "dict": (dict,),
          "list": (list, tuple)}


def type_ok(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits a string annotation such as ``"int | None"`` (bool is not a number)."""
    options = [a.strip() for a in str(annotation).split("|")]
    if value is None:
        return "None" in options
    for option in options:
        base = option.split("[")[0]
        if base == "None":  # the value is not None (handled above): this option does not admit it
            continue
        if base not in _TYPES:
            return True  # an annotation we do not check (e.g. Any)
        if isinstance(value, _TYPES[base]) and not (isinstance(value, bool) and base in ("int", "float")):
            return True
    return False


def _valid(meta: Mapping[str, Any]) -> str:
    """``"; it must lie in [0, 1)"`` / ``"; choose one of: a, b"`` for a field that declares a range, else ``""``."""
    if meta.get("choices") is not None:
        return f"; choose one of: {', '.join(map(str, meta['choices']))}"
    if meta.get("low") is None and meta.get("high") is None:
        return ""
    return f"; it must {_interval(meta.get('low'), meta.get('high'), meta.get('low_open'), meta.get('high_open'))}"


def check_field(owner: str, f: dataclasses.Field, value: Any) -> Any:
    """Type and range of one declared field (``None`` passes when the annotation allows it)."""
    meta = f.metadata
    if not type_ok(value, str(f.type)):
        raise InputTypeError(f"{owner}: {f.name} expects {f.type}, got {type(value).__name__} {value!r}"
                             f"{_valid(meta)}{_suffix(meta.get('hint', ''))}.")
    if value is None:
        return value
    if meta.get("choices") is not None:
        choice(f"{owner}: {f.name}", value, meta["choices"], meta.get("hint", ""))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        bounds = dict(low=meta.get("low"), high=meta.get("high"), hint=meta.get("hint", ""))
        if "float" in str(f.type):  # also refuses nan / inf
            real(f"{owner}: {f.name}", value, low_open=meta.get("low_open", False),
                 high_open=meta.get("high_open", False), **bounds)
        else:
            integer(f"{owner}: {f.name}", value, **bounds)
    return value


def build_params(cls: type, values: dict[str, Any], owner: str) -> Any:
    """An instance of the frozen dataclass ``cls`` from ``values``, every field checked (see :func:`param`)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{owner} got unknown parameter(s) {unknown}; valid: {', '.join(fields) or 'none'}.")
    missing = sorted(n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise InputError(f"{owner} needs parameter(s) {missing}.")
    for name, value in values.items():
        check_field(owner, fields[name], value)
    params = cls(**values)
    if hasattr(params, "check"):
        params.check()
    return params
