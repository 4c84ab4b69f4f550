"""Hyperparameter specifications: type, bounds, step, choices, default, and where each value comes from.

A ``ParamSpec`` is the single source of truth for one hyperparameter of one template: the Train page builds its widget
from it, ``validate`` checks requests against it, and ``python -m core templates --json`` prints it.

Every bound and default carries a source: ``"spec"`` when the specification (``../shared/seeds/``, published defaults
included) gives it, ``"chosen"`` when the catalog had to choose it; the help text then says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from core.errors import ValidationError

PARAM_TYPES = ("int", "float", "bool", "str")
SPEC, CHOSEN = "spec", "chosen"
_FIELDS = ("min", "max", "step", "default", "choices")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}
STEP_TOLERANCE = 1e-6  # how far from the grid (in steps) a float may be and still count as on it


def _fmt(value: Any) -> str:
    """A number as a person would write it (64, 0.5, 7.8125e-05)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if abs(value) >= 1 or value == 0 else repr(value)
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter of a template.

    ``chosen`` lists the fields among min, max, step, default and choices that the catalog chose (the rest come from
    the specification). ``aliases`` maps accepted spellings of a choice onto the canonical one (``"random"`` ->
    ``"None"``). ``narrow_min``/``narrow_reason`` tighten the minimum for one template where its network needs more
    than the specification allows; the spec bound stays in ``min`` (and on the widget) and validation explains why.
    """

    name: str
    type: str
    default: Any
    help: str
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    choices: tuple[str, ...] | None = None
    chosen: frozenset[str] = field(default_factory=frozenset)
    aliases: tuple[tuple[str, str], ...] = ()
    flag_labels: tuple[str, str] | None = None  # (label when 1/True, label when 0/False) for 0/1 flags
    narrow_min: float | int | None = None
    narrow_reason: str = ""

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"{self.name}: unknown type {self.type!r}")
        unknown = set(self.chosen) - set(_FIELDS)
        if unknown:
            raise ValueError(f"{self.name}: chosen names unknown fields {sorted(unknown)}")
        # The default itself must pass the spec's own checks (a catalog typo fails at import, not in a user's run).
        self.check(self.default)

    # ------------------------------------------------------------------ description
    @property
    def source(self) -> dict[str, str]:
        """``{"min": "spec", "max": "chosen", ...}`` for each field that applies to this parameter."""
        return {f: (CHOSEN if f in self.chosen else SPEC) for f in _FIELDS if getattr(self, f) is not None}

    @property
    def is_flag(self) -> bool:
        """A 0/1 integer flag such as logreg (shown as a labelled toggle)."""
        return self.type == "int" and self.min == 0 and self.max == 1 and self.step == 1

    @property
    def widget(self) -> str:
        """Which widget the page draws: toggle, select, slider or number."""
        if self.type == "bool" or self.is_flag:
            return "toggle"
        if self.choices is not None:
            return "select"
        if self.min is not None and self.max is not None and self.step is not None:
            return "slider"
        return "number"

    def allowed(self) -> str:
        """What is allowed, in words, for error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type == "bool":
            return "true or false"
        parts = []
        if self.min is not None and self.max is not None:
            parts.append(f"from {_fmt(self.min)} to {_fmt(self.max)}")
        elif self.min is not None:
            parts.append(f"at least {_fmt(self.min)}")
        elif self.max is not None:
            parts.append(f"at most {_fmt(self.max)}")
        if self.step is not None:
            parts.append(f"in steps of {_fmt(self.step)}")
        kind = "an integer" if self.type == "int" else "a number"
        return f"{kind} " + " ".join(parts) if parts else kind

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "min": self.min,
            "max": self.max,
            "step": self.step,
            "default": self.default,
            "choices": list(self.choices) if self.choices is not None else None,
            "source": self.source,
            "help": self.help,
        }

    # ------------------------------------------------------------------ validation
    def _fail(self, value: Any, why: str = "") -> ValidationError:
        msg = f"{self.name}: {value!r} is not allowed; expected {self.allowed()}"
        return ValidationError(msg + (f" ({why})" if why else ""))

    def coerce(self, value: Any) -> Any:
        """The value in this parameter's type (strings from a form or ``--set`` included); no range checks."""
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise self._fail(value)
        if self.type == "str":
            if value is None:
                value = "None"
            if not isinstance(value, str):
                raise self._fail(value)
            text = value.strip()
            for alias, canonical in self.aliases:
                if text.lower() == alias.lower():
                    return canonical
            for choice in self.choices or ():
                if text.lower() == choice.lower():
                    return choice
            return text
        # numbers
        if isinstance(value, bool):
            if self.is_flag:
                return int(value)
            raise self._fail(value)
        if isinstance(value, str):
            text = value.strip()
            if self.is_flag and text.lower() in _TRUE | _FALSE:
                return int(text.lower() in _TRUE)
            try:
                value = float(text)
            except ValueError:
                raise self._fail(value, "not a number") from None
        if not isinstance(value, (int, float)):
            raise self._fail(value, "not a number")
        value = float(value) if self.type == "float" else value
        if isinstance(value, float) and not math.isfinite(value):
            raise self._fail(value, "not a finite number")
        if self.type == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise self._fail(value, "not a whole number")
                value = int(value)
            return int(value)
        return float(value)

    def check(self, value: Any) -> Any:
        """Coerce and check one value against the spec's bounds, step grid and choices; return the clean value."""
        value = self.coerce(value)
        if self.choices is not None:
            if value not in self.choices:
                raise self._fail(value)
            return value
        if self.type in ("bool", "str"):
            return value
        if self.min is not None and value < self.min:
            raise self._fail(value, f"below the minimum {_fmt(self.min)}")
        if self.max is not None and value > self.max:
            raise self._fail(value, f"above the maximum {_fmt(self.max)}")
        if self.step is not None:
            k = (value - (self.min or 0)) / self.step
            if abs(k - round(k)) > STEP_TOLERANCE:
                raise self._fail(value, f"off the step grid {_fmt(self.min or 0)} + k x {_fmt(self.step)}")
            if self.type == "float":  # snap onto the grid so 0.30000000000000004 becomes 0.3
                value = float(round((self.min or 0) + round(k) * self.step, 12))
        if self.narrow_min is not None and value < self.narrow_min:
            raise ValidationError(
                f"{self.name}: {_fmt(value)} is too small for this template; it needs at least "
                f"{_fmt(self.narrow_min)} ({self.narrow_reason})"
            )
        return value
