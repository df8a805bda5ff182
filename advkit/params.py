"""Declared hyperparameters: each attack field's type and valid range, checked once on every path.

An attack's hyperparameters are the fields of its keyword-only dataclass. The type comes from the
annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``Literal[...]``, ``tuple``), the
range from :func:`param`::

    steps: int = param(40, ge=1, le=MAX_STEPS, doc="steps per restart")
    step_size: float | None = param(None, gt=0, doc="step in model units; default 2.5 * eps / steps")
    step_rule: str = param("sign", choices=lambda: STEP_RULES, doc='"sign", "l2", "std" or "raw"')

:class:`advkit.Attack` validates every field in ``__post_init__``, so the CLI's ``-p key=value``,
its named options (``--steps``) and Python keyword arguments all go through the same check,
before any work: an ``int`` is an int (not 2.5, not "2", not True), a ``float`` is a finite
number (never NaN or inf), and a value outside its range is refused with a
:class:`~advkit.errors.ParameterError` that names the parameter and the valid range. A plugin's
plain fields (no :func:`param`) still get the type check.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from typing import Any, Literal, Union

from advkit.errors import ParameterError

#: The most steps (or iterations) an attack may be asked for: a larger value is a typo, and would run for days.
MAX_STEPS = 1_000_000
#: The most restarts an attack may be asked for.
MAX_RESTARTS = 10_000

_META_KEY = "advkit"


@dataclass(frozen=True)
class Bounds:
    """A field's declared range (bounds on numbers, or a set of allowed values)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None
    doc: str = ""

    def allowed(self) -> list[Any] | None:
        if self.choices is None:
            return None
        values = self.choices() if callable(self.choices) else self.choices
        return list(values)

    def describe(self) -> str:
        """``"[1, 1000000]"``, ``"> 0"``, ``"[0, 1)"``, ``"one of 'sign', 'l2'"`` or ``""``."""
        allowed = self.allowed()
        if allowed is not None:
            return "one of " + ", ".join(repr(v) for v in allowed)
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            return (
                f"{'[' if self.ge is not None else '('}{_num(low)}, {_num(high)}{']' if self.le is not None else ')'}"
            )
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {_num(low)}"
        if high is not None:
            return f"{'<=' if self.le is not None else '<'} {_num(high)}"
        return ""

    def contains(self, value: Any) -> bool:
        allowed = self.allowed()
        if allowed is not None:
            return value in allowed
        if not isinstance(value, Real) or isinstance(value, bool):
            return True
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )


def _num(value: float) -> str:
    """1000000 -> "1000000" (not 1e+06), 0.5 -> "0.5"."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def param(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with a declared range (see the module docstring); ``choices`` may be a callable."""
    bounds = Bounds(ge=ge, gt=gt, le=le, lt=lt, choices=choices, doc=doc)
    return dataclasses.field(default=default, metadata={_META_KEY: bounds})


# ----------------------------------------------------------------------------- types

_NONE = type(None)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _members(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if _is_union(hint) else (hint,)


def type_name(hint: Any) -> str:
    """``"int"``, ``"float or None"``, ``"one of 'a', 'b'"`` for the listings and error messages."""
    names = []
    for member in _members(hint):
        if member is _NONE:
            continue
        if typing.get_origin(member) is Literal:
            names.append("one of " + ", ".join(repr(v) for v in typing.get_args(member)))
        else:
            names.append(getattr(member, "__name__", str(member)))
    text = " or ".join(names) or "None"
    return text + (" or None" if _NONE in _members(hint) else "")


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls``'s fields (a field whose annotation cannot be resolved gets Any)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a plugin with unresolvable forward references: resolve what the builtins can
        out = {}
        for f in dataclasses.fields(cls):
            try:
                out[f.name] = eval(f.type, {"__builtins__": __builtins__}, {}) if isinstance(f.type, str) else f.type
            except Exception:
                out[f.name] = Any
        return out


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter of an attack: name, type, default, range and one line of documentation."""

    owner: str
    name: str
    hint: Any
    default: Any
    bounds: Bounds

    @property
    def type_name(self) -> str:
        return type_name(self.hint)

    def describe(self) -> str:
        """``"an integer in [1, 1000000]"``, ``"a finite number > 0, or None"``, ``"true or false"``..."""
        members = [m for m in _members(self.hint) if m is not _NONE]
        optional = _NONE in _members(self.hint)
        if len(members) == 1 and members[0] is bool:
            text = "true or false"
        elif len(members) == 1 and members[0] is int:
            text = "an integer"
        elif len(members) == 1 and members[0] is float:
            text = "a finite number"
        elif len(members) == 1 and typing.get_origin(members[0]) is Literal:
            text = "one of " + ", ".join(repr(v) for v in typing.get_args(members[0]))
        elif len(members) == 1 and members[0] is str:
            text = "a string"
        else:
            text = "a " + type_name(self.hint).replace(" or None", "")
        rng = self.bounds.describe()
        if rng.startswith("one of"):
            text = rng
        elif rng.startswith(("[", "(")):
            text += f" in {rng}"
        elif rng:
            text += f" {rng}"
        return text + (", or None" if optional else "")

    def fail(self, value: Any) -> ParameterError:
        shown = repr(value) if not isinstance(value, float) else f"{value!r}"
        return ParameterError(f"{self.owner}: parameter {self.name} must be {self.describe()}, got {shown}")

    def check(self, value: Any) -> Any:
        """``value`` if it has the declared type and lies in the range (a list for a tuple field becomes a tuple);
        else a :class:`ParameterError` naming the parameter and its valid range."""
        members = _members(self.hint)
        if value is None:
            if _NONE in members or self.hint is Any:
                return None
            raise self.fail(value)
        for member in members:
            ok, converted = _fits(member, value)
            if ok:
                if not self.bounds.contains(converted):
                    raise self.fail(value)
                return converted
        raise self.fail(value)

    def parse(self, text: str) -> Any:
        """A command-line string (``-p key=value``) read as the declared type, then checked."""
        raw = text.strip()
        members = _members(self.hint)
        if raw.lower() == "none" and (_NONE in members or self.hint is Any):
            return None
        for member in members:
            value = _parse_as(member, raw)
            if value is not _NO:
                return self.check(value)
        raise ParameterError(f"{self.owner}: parameter {self.name} must be {self.describe()}; cannot read {text!r}")

    def to_dict(self) -> dict:
        default = None if self.default is dataclasses.MISSING else self.default
        return {
            "name": self.name,
            "type": self.type_name,
            "default": default,
            "range": self.bounds.describe() or None,
            "valid": self.describe(),
            "doc": self.bounds.doc,
        }


_NO = object()


def _fits(member: Any, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` is of type ``member`` (strictly: no bool for int, no float for int, finite floats)."""
    if member is Any:
        return True, value
    if member is bool:
        return isinstance(value, bool), value
    if member is int:
        return isinstance(value, Integral) and not isinstance(value, bool), value
    if member is float:
        if isinstance(value, Real) and not isinstance(value, bool):
            number = float(value)
            return math.isfinite(number), number
        return False, value
    if member is str:
        return isinstance(value, str), value
    if typing.get_origin(member) is Literal:
        return value in typing.get_args(member), value
    if member is tuple or typing.get_origin(member) is tuple:
        if isinstance(value, (tuple, list)):
            return True, tuple(value)
        return False, value
    if isinstance(member, type):
        return isinstance(value, member), value
    return True, value


def _parse_as(member: Any, raw: str) -> Any:
    """``raw`` as a value of type ``member``, or ``_NO``."""
    lowered = raw.lower()
    if member is bool:
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
        return _NO
    if member is int:
        try:
            return int(raw)
        except ValueError:
            return _NO
    if member is float:
        try:
            return float(Fraction(raw)) if "/" in raw else float(raw)
        except (ValueError, ZeroDivisionError):
            return _NO
    if member is str or member is Any:
        return raw
    if typing.get_origin(member) is Literal:
        return raw if raw in typing.get_args(member) else _NO
    if member is tuple or typing.get_origin(member) is tuple:
        parts = [p.strip() for p in raw.strip("()[]").split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            return _NO
    return _NO


def param_specs(cls: type) -> list[ParamSpec]:
    """The declared hyperparameters (init fields) of a dataclass, in field order."""
    hints = _hints(cls)
    owner = f"attack {getattr(cls, 'name', '') or cls.__name__!r}"
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
        specs.append(
            ParamSpec(
                owner=owner,
                name=f.name,
                hint=hints.get(f.name, Any),
                default=default,
                bounds=f.metadata.get(_META_KEY, Bounds()),
            )
        )
    return specs


def validate(obj: Any) -> None:
    """Check every declared field of a dataclass instance (normalizing lists for tuple fields)."""
    for spec in param_specs(type(obj)):
        value = getattr(obj, spec.name)
        checked = spec.check(value)
        if checked is not value:
            object.__setattr__(obj, spec.name, checked)


def parse_params(cls: type, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``[("steps", "40"), ("step-size", "8/255")]`` -> checked values by declared type; an unknown name or a
    name given twice is refused."""
    specs = {s.name: s for s in param_specs(cls)}
    owner = f"attack {getattr(cls, 'name', '') or cls.__name__!r}"
    out: dict[str, Any] = {}
    for key, text in pairs:
        name = key.strip().replace("-", "_")
        if name not in specs:
            raise ParameterError(f"{owner} has no parameter {name!r}; parameters: {', '.join(specs) or '(none)'}")
        if name in out:
            raise ParameterError(f"{owner}: parameter {name} is given twice")
        out[name] = specs[name].parse(text)
    return out


def check_seed(seed: Any, what: str = "seed") -> int:
    """A seed must be an integer in [0, 2**64 - 1] (the range of ``torch.Generator.manual_seed``)."""
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= 2**64 - 1:
        raise ParameterError(f"{what} must be an integer in [0, 2**64 - 1], got {seed!r}")
    return int(seed)


def check_count(value: Any, what: str, *, low: int = 1, high: int | None = None, optional: bool = True) -> int | None:
    """An integer count (a budget, a sample count) in [low, high]; None allowed when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ParameterError(
            f"{what} must be an integer {rng if rng.startswith('>') else 'in ' + rng}"
            f"{', or None' if optional else ''}, got {value!r}"
        )
    return int(value)


def check_batch_size(value: Any, what: str = "batch_size") -> int | str:
    """``"auto"`` or a whole number >= 1 (an integer, or a string of decimal digits such as ``"64"``), else
    ParameterError. The one rule for ``batch_size=`` in Python and ``--batch-size`` on the CLI (see advkit.batching)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isascii() and text.isdecimal() and int(text) >= 1:
            return int(text)
    elif isinstance(value, Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise ParameterError(f"{what} must be 'auto' or an integer >= 1, got {value!r}")


def check_number(
    value: Any, what: str, *, ge: float | None = None, lt: float | None = None, optional: bool = True
) -> float | None:
    """A finite number in [ge, lt); None allowed when ``optional``."""
    if value is None and optional:
        return None
    bounds = Bounds(ge=ge, lt=lt)
    spec = ParamSpec(owner="", name=what, hint=float | None if optional else float, default=None, bounds=bounds)
    try:
        return spec.check(value)
    except ParameterError:
        raise ParameterError(f"{what} must be {spec.describe()}, got {value!r}") from None


__all__ = [
    "MAX_RESTARTS",
    "MAX_STEPS",
    "Bounds",
    "ParamSpec",
    "check_batch_size",
    "check_count",
    "check_number",
    "check_seed",
    "param",
    "param_specs",
    "parse_params",
    "type_name",
    "validate",
]
