"""How a config field is declared: its default, meaning, kind and check.

Every field of the experiment config is one :class:`Field` (the base fields in
:mod:`deadjax.config`, each remedy's own in its entry of
:mod:`deadjax.interventions`); everything that depends on a field's kind is
derived from that one declaration:

* ``per_member``: the value is a traced array with a leading member axis, so
  points that differ in it share a group and a compiled program (DESIGN.md,
  "The one idea"); ``hparam`` names it in ``MemberState.hparams`` and
  ``encode`` turns a non-numeric value into the number stored there. Every
  other field is *static*: points that differ in it form different groups.
* ``added``: the field appeared after workdirs existed (the date it landed). A
  workdir's ``config.json`` without it reads as holding the default, and a
  group's id leaves it out while it holds the default, so older workdirs keep
  their groups, checkpoints and results.
  ``before`` is the value such a workdir implicitly had, when it is not the
  default (a new default that changes what a run does): a workdir written
  before the field existed reads as holding ``before``, so resuming it with
  the new default is refused as another experiment rather than silently
  switching behaviour half-way.
* ``run_length``: the field may change when a workdir is resumed
  (``train.steps``).
* ``recording``: the field changes what is recorded or how members are
  chunked, never what is trained (``train.eval_every``, the diagnostics, ...):
  it may change when a workdir is resumed (new evaluations follow the new
  value from the resume point), it is not part of a group's id, and
  ``config.json``'s history records each change.
* ``check(name, value)``: raises :class:`~deadjax.errors.ConfigError` with one
  sentence naming the field, the value and what is allowed. Checks that
  involve several fields live in :func:`deadjax.config.validate`.

The check constructors below (:func:`integer`, :func:`real`, :func:`one_of`,
...) build the common checks; a field may also give any function of
``(name, value)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from deadjax.errors import ConfigError

Check = Callable[[str, Any], None]

_DEFAULT = object()  # Field.before: "the default"


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field, declared once (see the module docstring)."""

    name: str                      # dotted: "optim.learning_rate"
    default: Any
    doc: str                       # its meaning, for --help and the docs
    check: Check | None = None
    per_member: bool = False
    hparam: str | None = None      # key in MemberState.hparams (per-member fields)
    encode: Callable[[Any], float] | None = None
    added: str | None = None       # date it was added after workdirs existed
    before: Any = _DEFAULT         # the value workdirs older than ``added`` had
    run_length: bool = False
    recording: bool = False

    @property
    def section(self) -> str:
        """``"optim"`` for ``optim.learning_rate``; ``""`` for top-level fields."""
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""

    @property
    def value_before(self) -> Any:
        """The value a workdir written before the field existed had."""
        return self.default if self.before is _DEFAULT else self.before

    def value_for_state(self, value) -> float:
        """The number a per-member value is stored as in ``MemberState.hparams``."""
        return self.encode(value) if self.encode is not None else value


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def allowed(field: str, value: Any, options: Sequence) -> None:
    """Refuses ``value`` unless it is one of ``options``."""
    if value not in options:
        raise ConfigError(f"{field} = {value!r} is not allowed; choose one of "
                          f"{', '.join(repr(a) for a in options)}.")


def number(field: str, value: Any, *, low=None, high=None, low_open=False,
           high_open=False, integer=False, what="") -> None:
    """Refuses anything but a (finite, or integer) number in the given range."""
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or (
            not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{field} = {value!r} is not allowed; it must be {kind}"
                          f"{' ' + what if what else ''}.")
    bad = ((low is not None and (value <= low if low_open else value < low)) or
           (high is not None and (value >= high if high_open else value > high)))
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        rng = (f"in {lo}{hi}" if low is not None and high is not None else
               (f"{'>' if low_open else '>='} {low}" if low is not None else
                f"{'<' if high_open else '<='} {high}"))
        raise ConfigError(f"{field} = {value!r} is not allowed; it must be {rng}"
                          f"{' ' + what if what else ''}.")


def integer(low=None, high=None, *, what: str = "") -> Check:
    return lambda f, v: number(f, v, low=low, high=high, integer=True, what=what)


def real(low=None, high=None, *, low_open=False, high_open=False, what: str = "") -> Check:
    return lambda f, v: number(f, v, low=low, high=high, low_open=low_open,
                               high_open=high_open, what=what)


def one_of(options: Sequence | Callable[[], Sequence]) -> Check:
    """``options`` may be a function, for registries that grow (remedies)."""
    return lambda f, v: allowed(f, v, options() if callable(options) else options)


def boolean() -> Check:
    def check(f, v):
        if not isinstance(v, bool):
            raise ConfigError(f"{f} = {v!r} is not allowed; it must be True or False.")
    return check


def text(*, empty: bool = True, what: str = "") -> Check:
    """A string; ``empty=False`` refuses ``""`` too."""
    def check(f, v):
        if not isinstance(v, str) or (not empty and not v):
            kind = "a string" if empty else "a non-empty string"
            raise ConfigError(f"{f} = {v!r} is not allowed; it must be {kind}"
                              f"{' ' + what if what else ''}.")
    return check
