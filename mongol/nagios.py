"""What a Nagios/Icinga plugin speaks: threshold ranges, states and the one status line with perfdata.

Ranges follow the Monitoring Plugins development guidelines, parsed by the `nagiosplugin` library:
`[@][start:][end]`, where a missing start is 0, `~` as start is minus infinity and a missing end is
infinity. A value *outside* the range raises the alert, or *inside* it with a leading `@`:

========  ==============================
``10``    alert when < 0 or > 10
``10:``   alert when < 10
``~:10``  alert when > 10
``10:20`` alert when < 10 or > 20
``@10:20`` alert when >= 10 and <= 20
========  ==============================
"""

from dataclasses import dataclass
from enum import IntEnum

from nagiosplugin import Range

from mongol.errors import MongolError

RANGE_SYNTAX = "[@][start:][end], such as 10, 10:, ~:10, 10:20 or @10:20"
MAX_MESSAGE = 400  # characters of an error message kept on the status line


class State(IntEnum):
    """A plugin's exit status."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


def parse_range(text: str, option: str = "range") -> Range:
    """A threshold range; MongolError naming the option and the expected syntax when it is not one."""
    spec = text.strip()
    if not spec or spec in ("@", ":", "@:"):
        raise MongolError(f"bad {option} {text!r}: expected {RANGE_SYNTAX}")
    try:
        return Range(spec)
    except ValueError as exc:
        reason = str(exc) if "greater" in str(exc) else f"expected {RANGE_SYNTAX}"
        raise MongolError(f"bad {option} {text!r}: {reason}") from None


def violation(rng: Range, level: str) -> str:
    """Why a value alerts against `rng`: `outside the critical range 10:`, `inside the warning range @10:20`."""
    return f"{'inside' if rng.invert else 'outside'} the {level} range {rng}"


@dataclass(frozen=True)
class Verdict:
    state: State
    reason: str = ""  # empty when OK


def judge(value: float, warning: Range | None, critical: Range | None) -> Verdict:
    """CRITICAL if the value alerts against `critical`, else WARNING against `warning`, else OK."""
    if critical is not None and not critical.match(value):
        return Verdict(State.CRITICAL, violation(critical, "critical"))
    if warning is not None and not warning.match(value):
        return Verdict(State.WARNING, violation(warning, "warning"))
    return Verdict(State.OK)


def perfdata(label: str, value: float, warning: Range | None, critical: Range | None,
             minimum: float | None = None, maximum: float | None = None) -> str:
    """`label=value;warn;crit;min;max`, as the guidelines define it; a field not given stays empty."""
    if not label.replace("_", "").isalnum():
        label = "'" + label.replace("'", "''") + "'"
    fields = ("" if f is None else str(f) for f in (warning, critical, minimum, maximum))
    return f"{label}={value};" + ";".join(fields)


def status_line(service: str, state: State, text: str, perf: str = "") -> str:
    """`SERVICE STATE - text | perfdata` on one line (newlines in `text` become spaces)."""
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE - 3] + "..."
    text = text.replace("|", "/")  # a `|` would start the perfdata
    return f"{service} {state.name} - {text}" + (f" | {perf}" if perf else "")
