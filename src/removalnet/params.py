"""Declarative parameters: :class:`Param` (default, type, range, choices) and :func:`validate_params`.

The one parameter system of the package: attacks (``Attack.PARAMS``), verifiers (``Verifier.PARAMS``) and
studies (``Study.PARAMS``) declare their parameters with it and validate them at construction (ART style);
``removalnet attack --list``, ``verify --list`` and ``study --list`` print :meth:`Param.describe`. It depends on nothing else in the package but the
error type, so any layer can use it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .utils import RemovalNetError

__all__ = ["Param", "Option", "validate_params", "describe_params", "class_params", "identity_params"]


def _who(name: str) -> str:
    """How a message names a parameter: a command-line option as it is spelled, anything else quoted."""
    return name if name.startswith("--") else f"parameter {name!r}"

@dataclass(frozen=True)
class Param:
    """One parameter (of an attack, a study, ...): default, type and allowed range, validated at construction.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``dict`` (a mapping, e.g. another component's
    parameters) or ``list`` (a non-empty list of numbers, each checked against ``low``/``high``, or of
    strings from ``choices``). ``choices`` restricts a value to a set; ``nullable`` allows
    ``None``; ``low``/``high`` are inclusive unless ``low_open``/``high_open``. ``omit_default``: a parameter
    added after job ids were published; at its default it is left out of the parameters that ids hash
    (:func:`identity_params`, ``Attack.identity_params``), so the ids of existing runs stay.
    """

    default: Any
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    nullable: bool = False
    doc: str = ""
    omit_default: bool = False

    def validate(self, name: str, value: Any) -> Any:
        """Return ``value`` converted to the parameter's type, or raise ``RemovalNetError``."""
        if value is None:
            if self.nullable:
                return None
            raise RemovalNetError(f"{_who(name)} must not be None")
        if self.kind is list:
            what = "strings" if self.choices is not None else "numbers"
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
                raise RemovalNetError(f"{_who(name)} must be a non-empty list of {what}, got {value!r}")
            if self.choices is not None:  # a list of names, each one of the choices
                for v in value:
                    if v not in self.choices:
                        raise RemovalNetError(f"parameter {name!r}: {v!r} is not one of "
                                              f"{', '.join(map(str, self.choices))}")
                return list(value)
            return [self._number(name, v, float) for v in value]
        if self.kind is dict:
            if not isinstance(value, Mapping):
                raise RemovalNetError(f"{_who(name)} must be a mapping, got {value!r}")
            return dict(value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RemovalNetError(f"{_who(name)} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise RemovalNetError(f"{_who(name)} must be a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise RemovalNetError(f"{_who(name)} must be one of {', '.join(map(str, self.choices))}, "
                                      f"got {value!r}")
            return value
        if self.kind in (int, float):
            v = self._number(name, value, self.kind)
            if self.choices is not None and v not in self.choices:
                raise RemovalNetError(f"{_who(name)} must be one of {self.choices}, got {value!r}")
            return v
        raise TypeError(f"unsupported parameter kind {self.kind!r} for {name!r}")

    def _number(self, name: str, value: Any, kind: type) -> int | float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RemovalNetError(f"{_who(name)} must be a{'n integer' if kind is int else ' number'}, "
                                  f"got {value!r}")
        if kind is int:
            if isinstance(value, numbers.Integral):
                v: int | float = int(value)
            elif float(value).is_integer():
                v = int(value)
            else:
                raise RemovalNetError(f"{_who(name)} must be an integer, got {value!r}")
        else:
            v = float(value)
            if not math.isfinite(v):
                raise RemovalNetError(f"{_who(name)} must be finite, got {value!r}")
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            raise RemovalNetError(f"{_who(name)} must be {'>' if self.low_open else '>='} {self.low}, "
                                  f"got {value!r}")
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            raise RemovalNetError(f"{_who(name)} must be {'<' if self.high_open else '<='} {self.high}, "
                                  f"got {value!r}")
        return v

    def describe(self) -> str:
        rng = ""
        if self.choices is not None:
            rng = " in {" + ", ".join(map(str, self.choices)) + "}"
        elif self.low is not None or self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            rng = f" in {lo}{'-inf' if self.low is None else self.low}, {'inf' if self.high is None else self.high}{hi}"
        none = " or None" if self.nullable else ""
        return f"{self.kind.__name__}{rng}{none}, default {self.default!r}" + (f": {self.doc}" if self.doc else "")


class Option:
    """The ``type=`` of a numeric command-line option with a range: ``type=Option(float, low=0, high=100)``.

    argparse only converts the text (``invalid float value: 'x'`` as before); the range is checked by
    :meth:`check`, which the command line applies to every such option, given on the command line or in a
    ``--config`` file, before the command starts (``--margin must be <= 100, got 150``; nan and inf refused).
    """

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False):
        self.param = Param(None, kind, low, high, low_open, high_open, nullable=True)
        self.__name__ = kind.__name__   # argparse names the type in its message

    def __call__(self, text: str) -> int | float:
        return self.param.kind(text)

    def __repr__(self) -> str:
        return f"Option({self.param.describe()})"

    def check(self, option: str, value: Any) -> Any:
        """``value`` of ``option`` (e.g. ``"--margin"``) as a number in range, or a RemovalNetError."""
        return self.param.validate(option, value)


def validate_params(spec: dict[str, Param], params: dict[str, Any], owner: str, *,
                    keep_ints: bool = False) -> dict[str, Any]:
    """Every parameter of ``spec`` validated, defaults filled in; an unknown name or a bad value raises, naming
    ``owner`` (e.g. ``"verifier 'sac'"``).

    ``keep_ints``: a ``float`` parameter given (or defaulting to) a Python ``int`` keeps the int (4 stays 4,
    not 4.0), for owners whose parameters are hashed as given (a verifier's fingerprint key and job ids).
    """
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise RemovalNetError(f"unknown parameter {unknown[0]!r} for {owner}; known: {', '.join(sorted(spec))}")
    out = {}
    for key, p in spec.items():
        given = params[key] if key in params else p.default
        try:
            value = p.validate(key, given)
        except RemovalNetError as e:
            raise RemovalNetError(f"{owner}: {e}") from None
        out[key] = given if keep_ints and p.kind is float and type(given) is int else value
    return out


def class_params(cls: type, attr: str = "PARAMS") -> dict[str, Param]:
    """The parameters a class declares in ``attr``, merged over its MRO (subclasses win, base order kept)."""
    spec: dict[str, Param] = {}
    for klass in reversed(cls.__mro__):
        spec.update(getattr(klass, attr, {}) or {})
    return spec


def describe_params(spec: Mapping[str, Any]) -> list[str]:
    """One line per parameter: ``name: kind in range, default ...: doc`` (for ``--list``); values that are
    not :class:`Param` (plain defaults) print as ``name: default ...``."""
    out = []
    for key, p in spec.items():
        out.append(f"{key}: {p.describe()}" if isinstance(p, Param) else f"{key}: default {p!r}")
    return out


def identity_params(spec: Mapping[str, Param], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as they enter a job id: every parameter, except one declared ``omit_default`` that is at its
    default (adding such a parameter leaves the ids of existing experiments unchanged)."""
    return {k: v for k, v in values.items()
            if not (k in spec and spec[k].omit_default and v == spec[k].default)}
