"""reports.cfg: every option declared once, parsed and checked as a whole.

OPTIONS drives parsing, the defaults, `reports.cfg.example` and README (a test keeps them in step).
Every problem in a file is collected; `ConfigError` carries one line per problem, each naming the
file, the section and the option.
"""

import configparser
import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mongol.errors import MongolError

DEFAULT_MAPPER = "function () { emit({url: this.url, title: this.title}, this.pageviews); }"
DEFAULT_REDUCER = "function (key, values) { var sum = 0; values.forEach(function (v) { sum += v; }); return sum; }"
TIME_UNITS = ("weeks", "days", "hours", "minutes", "seconds")
ENGINES = ("embedded", "server")
JS_RESERVED = frozenset("""
break case catch class const continue debugger default delete do else enum export extends false finally for
function if import in instanceof new null return super switch this throw true try typeof var void while with
yield let static implements interface package private protected public await
""".split())  # noqa: SIM905


@dataclass(frozen=True)
class Option:
    name: str
    default: str | None
    help: str
    example: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("output", None, "Required. The folder the report is written to, as OUTPUT/SECTION.json; `~` is expanded "
           "and missing folders are created.", "/var/www/mongol"),
    Option("time", None, "Only hits of this window (now minus it, UTC) feed the report: space-separated unit:int "
           "pairs with units weeks, days, hours, minutes, seconds. After the report is written, older hits of the "
           "section's site are removed, unless another section of the file still reads them.", "days:2 hours:6"),
    Option("site", None, "Only hits of this site. Also the site whose old hits `time` removes; without it, "
           "hits whose site equals the section name.", "example.com"),
    Option("callback", "results", "The JSONP function the file calls: a JavaScript identifier or dotted path.",
           "mongol.top"),
    Option("limit", "10", "How many results to keep, after sorting on the value; 0 keeps them all.", "20"),
    Option("order", "D", "Sort on the reduced value: A (ascending) or D (descending); ties in key order.", "A"),
    Option("mapper", DEFAULT_MAPPER, "MongoDB map function: `this` is the hit, `emit(key, value)`.", None),
    Option("reducer", DEFAULT_REDUCER, "MongoDB reduce function `(key, values)`: may be called again on its own "
           "results, and not at all for a key emitted once.", None),
    Option("finalize", None, "Optional MongoDB finalize function `(key, value)`, applied to every result.",
           "function (key, value) { return Math.round(value); }"),
    Option("pipeline", None, "MongoDB store only: a JSON aggregation pipeline run by the server instead of "
           "map/reduce. The window and site are matched first; order and limit sort on `value`.",
           '[{"$group": {"_id": "$lang", "value": {"$sum": 1}}}]'),
    Option("engine", "embedded", "Who runs a custom mapper/reducer: `embedded` (quickjs-ng in worker "
           "processes, on either store) or `server` (MongoDB's own mapReduce command, where the server allows it).",
           "server"),
    Option("cpu_limit", "300", "CPU seconds the section's JavaScript may use in all; past it the section fails.",
           "60"),
    Option("memory_limit", "512", "Megabytes each JavaScript context may allocate; past it the section fails.",
           "256"),
    Option("standard", "no", "yes: the standard reports of `site` (required with it): daily figures kept in the "
           "store, published as SECTION.json and SECTION/YYYY-MM.json for the dashboard; mapper, reducer, "
           "pipeline, limit and order do not apply, and `time` only removes old raw hits.", "yes"),
    Option("timezone", "UTC", "The IANA time zone whose days and hours the standard reports count in.",
           "Europe/Berlin"),
)
OPTION_NAMES = tuple(o.name for o in OPTIONS)
DEFAULTS = {o.name: o.default for o in OPTIONS}


class ConfigError(MongolError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ReportSpec:
    """One section of the file, checked."""

    name: str
    output: Path
    window: timedelta | None
    site: str | None
    callback: str
    limit: int
    descending: bool
    mapper: str
    reducer: str
    finalize: str | None
    pipeline: list | None
    engine: str
    cpu_seconds: float
    memory_mb: int
    standard: bool = False
    timezone: str = "UTC"

    @property
    def path(self) -> Path:
        return self.output / f"{self.name}.json"

    @property
    def purge_site(self) -> str:
        return self.site if self.site is not None else self.name

    @property
    def is_default(self) -> bool:
        """True when the built-in mapper and reducer apply, so the store's native path gives the same result."""
        return (self.mapper == DEFAULT_MAPPER and self.reducer == DEFAULT_REDUCER and self.finalize is None
                and self.pipeline is None)


def parse_window(text: str) -> timedelta:
    """`days:2 hours:6` as a timedelta; ValueError says what is wrong."""
    parts: dict[str, int] = {}
    for pair in text.split():
        unit, sep, number = pair.partition(":")
        if not sep or unit not in TIME_UNITS or not re.fullmatch(r"\d+", number):
            raise ValueError(f"{pair!r} is not unit:int with a unit among {', '.join(TIME_UNITS)}")
        if unit in parts:
            raise ValueError(f"{unit} is given twice")
        parts[unit] = int(number)
    if not parts:
        raise ValueError("it is empty")
    try:
        window = timedelta(**parts)
    except OverflowError:
        raise ValueError("it is too long") from None
    if not window:
        raise ValueError("it is zero")
    return window


def check_callback(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*", text, re.ASCII):
        raise ValueError(f"{text!r} is not a JavaScript identifier or dotted path (like results or mongol.top)")
    first = text.split(".")[0]
    if first in JS_RESERVED:
        raise ValueError(f"{text!r} starts with the reserved word {first!r}")
    return text


def _int(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\d+", text.strip()) or int(text) < low:
            raise ValueError(f"{text!r} is not a whole number of at least {low}")
        return int(text)
    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        for choice in allowed:
            if text.strip().lower() == choice.lower():
                return choice
        raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
    return parse


def _yes_no(text: str) -> bool:
    if text.strip().lower() in ("yes", "true", "on", "1"):
        return True
    if text.strip().lower() in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


def _timezone(text: str) -> str:
    try:
        ZoneInfo(text.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{text!r} is not an IANA time zone name (like UTC or Europe/Berlin)") from None
    return text.strip()


def _pipeline(text: str) -> list:
    try:
        stages = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not JSON: {exc}") from None
    if not isinstance(stages, list) or not all(isinstance(s, dict) and len(s) == 1 for s in stages):
        raise ValueError("it must be a JSON array of stages, each an object with one $operator")
    return stages


PARSERS: dict[str, Callable[[str], Any]] = {
    "time": parse_window,
    "callback": check_callback,
    "limit": _int(0),
    "order": _choice("A", "D"),
    "pipeline": _pipeline,
    "engine": _choice(*ENGINES),
    "cpu_limit": lambda text: float(_int(1)(text)),
    "memory_limit": _int(16),
    "standard": _yes_no,
    "timezone": _timezone,
}


def load(path: str | Path, *, mongodb: bool) -> list[ReportSpec]:
    """The sections of a config file, in file order; ConfigError lists every problem found."""
    path = Path(path)
    where = str(path)
    parser = configparser.ConfigParser(interpolation=None, default_section="DEFAULT")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read it: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{where}: it is not UTF-8 text: {exc}"]) from None
    except configparser.Error as exc:
        message = " ".join(str(exc).split())
        raise ConfigError([f"{where}: it is not an INI file: {message}"]) from None

    problems: list[str] = []
    specs: list[ReportSpec] = []
    if not parser.sections():
        problems.append(f"{where}: no report sections")
    for unknown in [o for o in parser.defaults() if o not in OPTION_NAMES]:
        problems.append(f"{where}: [DEFAULT] {unknown}: unknown option{_did_you_mean(unknown)}")
    for name in parser.sections():
        mine = _section_problems(where, name, parser, mongodb, values := {})
        if not mine:
            mine = _compile_problems(where, name, values)
        if not mine:
            specs.append(ReportSpec(
                name=name, output=Path(values["output"]).expanduser(), window=values["time"],
                site=values["site"], callback=values["callback"], limit=values["limit"],
                descending=values["order"] == "D", mapper=values["mapper"], reducer=values["reducer"],
                finalize=values["finalize"], pipeline=values["pipeline"], engine=values["engine"],
                cpu_seconds=values["cpu_limit"], memory_mb=values["memory_limit"],
                standard=values["standard"], timezone=values["timezone"]))
        problems.extend(mine)
    if problems:
        raise ConfigError(problems)
    return specs


def _section_problems(where: str, name: str, parser: configparser.ConfigParser, mongodb: bool,
                      values: dict[str, Any]) -> list[str]:
    """Check one section, filling `values` with parsed options; the problems found, one line each."""
    section = parser[name]
    problems: list[str] = []

    def problem(option: str, message: str) -> None:
        problems.append(f"{where}: [{name}] {option}: {message}")

    if not re.fullmatch(r"[\w.@+-]+", name) or name.startswith("."):
        problem("(section name)", "a section name becomes a file name: use letters, digits and . _ - + @")
    for option in section:
        if option not in OPTION_NAMES and option not in parser.defaults():
            problem(option, f"unknown option{_did_you_mean(option)}")
    for option in OPTIONS:
        raw = section.get(option.name, option.default)
        raw = raw.strip() if raw is not None else None
        if raw == "" and option.default is not None:
            raw = option.default  # an empty value means the default
        if raw and option.name in PARSERS:
            try:
                values[option.name] = PARSERS[option.name](raw)
            except ValueError as exc:
                problem(option.name, str(exc))
        else:
            values[option.name] = raw or None
    if not values.get("output"):
        problem("output", "required: the folder to write the report to")
    if values.get("pipeline") is not None and not mongodb:
        problem("pipeline", "needs a MongoDB store (the embedded store has no aggregation pipelines)")
    if values.get("engine") == "server" and not mongodb:
        problem("engine", "server needs a MongoDB store (the embedded store has no mapReduce command)")
    if values.get("standard") and not values.get("site"):
        problem("site", "required with standard = yes: the site whose standard reports these are")
    return problems


def _compile_problems(where: str, name: str, values: dict[str, Any]) -> list[str]:
    if values.get("pipeline") is not None or values.get("standard"):
        return []
    from mongol.mapreduce import CompileError, check_compiles

    try:
        check_compiles(values["mapper"], values["reducer"], values["finalize"])
    except CompileError as exc:
        return [f"{where}: [{name}] {exc.option}: {' '.join(str(exc).split())}"]
    return []


def _did_you_mean(option: str) -> str:
    close = difflib.get_close_matches(option, OPTION_NAMES, n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(OPTION_NAMES)})"
