"""MongoDB-style map/reduce over hits, run in quickjs-ng inside spawned worker processes.

The user's JavaScript never runs in the calling process. Each worker owns one QuickJS context with
no file system, network, environment, module loader or Python callables in it, under a memory limit,
and every call into it runs under what is left of the run's CPU budget.

Speed comes from crossing into the engine once per batch: the parent encodes ~1000 hits as one JSON
text (dates as tagged numbers), and the loop over them (parse, call the mapper with the hit as `this`,
group emits in a Map keyed by a canonical string of the key, re-reduce keys whose values pile up)
runs inside JavaScript. Parsing is most of that work, so a mapper that reads the hit only as
`this.name` gets only the fields it names. With several workers each reduces its share; the partial
results are split by key, merged by re-reduce and finalized in parallel.

A store that the workers can read themselves (SQLite) is given as a HitSource instead: the parent
only hands out parts of it (map_reduce_source), each worker reads its parts' raw JSON and JavaScript
parses each hit once, so no hit passes through the parent, which would otherwise take a core of its
own to read and feed the workers.

Hits reach JavaScript as JSON does, except that a datetime becomes a Date (milliseconds; a naive one
is taken as UTC) and a date an ISO string; other types (bytes, sets, ...) fail the run.

Values coming back from JavaScript convert like JSON with two additions: a Date becomes an aware UTC
datetime, and NaN/Infinity become floats. A number that is integral with magnitude at most 2**53 comes
back as int, any other number as float (so 1.0 comes back as 1, -0 as 0). undefined becomes None,
and object fields that are undefined (or functions) are left out, as JSON.stringify does.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import re
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import chain, islice
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn, Protocol

import orjson

from mongol.errors import MongolError

__all__ = ["DATE_TAG", "CompileError", "HitSource", "Limits", "MapReduceError", "check_compiles", "encoded_batches",
           "map_reduce", "map_reduce_encoded", "map_reduce_source", "mapper_fields"]

#: Hits handed to the engine per call.
BATCH_SIZE = 1000
#: With `workers=None`, more workers are started once this many hits have been read.
SPLIT_AFTER = 50_000
#: Batches a worker may have queued but not yet processed.
CREDITS = 4
#: Parts of a HitSource a worker may have queued, the one it reads included.
SCAN_AHEAD = 2
#: While workers read a HitSource: how long (seconds) each maps hits between reports of its progress
#: (and at the end of each part), and how often at most each is told what is left of the CPU budget.
REPORT_EVERY = 0.02
ALLOWANCE_EVERY = 0.01
#: A worker that answers nothing for longer than this (beyond its CPU budget) is treated as hung.
STALL_SLACK_SECONDS = 60.0

OPTIONS = ("mapper", "reducer", "finalize")
# What the engine was doing, by the number the driver keeps in __mongol_phase (for error messages).
_PHASES = ("mapper", "reducer", "finalize", "converting the results", "reading the hits", "merging the results")

# How dates and non-finite numbers travel through JSON in both directions. A NUL cannot occur in
# a stored field name (the pixel drops it), so the tags cannot collide with a hit's own fields.
_DATE = DATE_TAG = "\x00date"
_NUMBER = "\x00num"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SAFE = 2**53


class MapReduceError(MongolError):
    """A map/reduce run failed: a JavaScript error, the CPU or memory limit, or a worker that died."""


class CompileError(MongolError):
    """An option's JavaScript source does not compile to a function."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        #: "mapper", "reducer" or "finalize"
        self.option = option

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.option, str(self))


@dataclass(frozen=True)
class Limits:
    """What one map/reduce run may use."""

    #: Total CPU time of the JavaScript for one run (one report section), across all workers.
    cpu_seconds: float = 300.0
    #: Memory of each worker's JavaScript context.
    memory_mb: int = 512

    def __post_init__(self) -> None:
        if not self.cpu_seconds > 0:
            raise ValueError(f"cpu_seconds must be positive, not {self.cpu_seconds!r}")
        if self.memory_mb < 8:
            raise ValueError(f"memory_mb must be at least 8, not {self.memory_mb!r}")


DEFAULT_LIMITS = Limits()


class HitSource(Protocol):
    """Hits that the workers read themselves, part by part, so that no hit passes through the parent.

    The object is pickled to every worker: keep it small, with no open connection in it.
    """

    def count(self) -> int:
        """How many hits there are (called in the parent, for a progress bar only)."""

    def parts(self) -> Iterable[tuple[int, Any]]:
        """Called in the parent: the parts to hand out, as (about how many hits, part); a part is any
        value orjson can encode, and together the parts hold every hit once."""

    def read(self, part: Any) -> Iterable[tuple[int, str, bool]]:
        """Called in a worker: the hits of one part, in batches of at most BATCH_SIZE hits, each
        (how many, text, tagged). The text is the JSON array [docs, ids, times]: docs, one JSON
        object per hit; ids, null or each hit's `_id` (a string); times, null or each hit's `time` in
        milliseconds since 1970, UTC. A hit gets `_id` then `time` as its last fields, time as a Date.
        Unless `tagged`, no doc holds a DATE_TAG or number tag (as a key), so none is looked for.
        Raise MongolError (StoreError) when the store cannot be read: its message fails the run.
        """


# ---------------------------------------------------------------------------------------------
# The JavaScript side

# Installed once per context, before any user code. Only the names below `globalThis.` are global;
# the rest stays inside the closure (user code could still overwrite the globals, which can only
# spoil its own results).
_DRIVER = r"""
(function () {
"use strict";
const g = globalThis;
const DATE = "\u0000date", NUM = "\u0000num";
const PILE = 1000;            // re-reduce a key once this many values are pending
const fns = [null, null, null];
let mapper = null, reducer = null, finalizer = null;
let table = new Map();        // canonical key -> {key, values}
let parts = null;             // partitions computed by partial()
let mapping = false;          // emit() is for the mapper only
const dateProto = Date.prototype;
const origToJSON = dateProto.toJSON;
function taggedDate() { return {[DATE]: this.getTime()}; }

g.__mongol_phase = 3;

// A Date in a key must not equal the string of its ISO form: let JSON.stringify tag dates natively.
function keyJSON(k) {
  dateProto.toJSON = taggedDate;
  try { return JSON.stringify(k); } finally { dateProto.toJSON = origToJSON; }
}

// An own "__proto__" field (JSON.parse makes them) must stay a field: plain assignment would call the
// setter that replaces the prototype.
function put(o, k, v) {
  if (k === "__proto__") Object.defineProperty(o, k, {value: v, writable: true, enumerable: true, configurable: true});
  else o[k] = v;
}

// Emitted keys and values are copied, as MongoDB copies them into BSON: a mapper may reuse or
// change an object after emitting it, and a reducer may change its input values.
function clone(v) {
  if (Array.isArray(v)) {
    const n = v.length, a = new Array(n);
    for (let i = 0; i < n; i++) { const x = v[i]; a[i] = (typeof x === "object" && x !== null) ? clone(x) : x; }
    return a;
  }
  if (v instanceof Date) return new Date(v.getTime());
  const o = {}, ks = Object.keys(v);
  for (let i = 0; i < ks.length; i++) {
    const k = ks[i], x = v[k];
    put(o, k, (typeof x === "object" && x !== null) ? clone(x) : x);
  }
  return o;
}

function revive(o) {
  if (Array.isArray(o)) {
    for (let i = 0; i < o.length; i++) { const x = o[i]; if (typeof x === "object" && x !== null) o[i] = revive(x); }
    return o;
  }
  const t = o[DATE];
  if (t !== undefined) return new Date(t === null ? NaN : t);
  const n = o[NUM];
  if (n !== undefined) return Number(n);
  reviveFields(o);
  return o;
}

function reviveFields(o) {
  for (const k in o) {
    const x = o[k];
    if (typeof x === "object" && x !== null) { const y = revive(x); if (y !== x) put(o, k, y); }
  }
}

function reviveValue(x) { return (typeof x === "object" && x !== null) ? revive(x) : x; }

function replacer(k, v) {
  const o = this[k];
  if (o instanceof Date) { const t = o.getTime(); return t === t ? {[DATE]: t} : null; }
  if (typeof v === "number" && !isFinite(v)) return {[NUM]: String(v)};
  return v;
}

function encode(x) {
  g.__mongol_phase = 3;
  return JSON.stringify(x, replacer);
}

function reduceValues(key, values) {
  const phase = g.__mongol_phase, m = mapping;
  g.__mongol_phase = 1;
  mapping = false;
  const r = reducer(key, values);
  g.__mongol_phase = phase;
  mapping = m;
  return r;
}

function emit(k, v) {
  if (!mapping) throw new Error("emit() can only be called by the mapper");
  let c;
  switch (typeof k) {
    case "string": c = "s" + k; break;
    case "number": c = "n" + k; break;       // 1 and 1.0 are one number; -0 prints as 0
    case "boolean": c = k ? "t" : "f"; break;
    case "undefined": k = null; c = "z"; break;
    case "object":
      if (k === null) c = "z"; else c = "j" + keyJSON(k);
      break;
    default: throw new TypeError("emit: a key cannot be a " + typeof k);
  }
  if (typeof v === "object" && v !== null) v = clone(v);
  const e = table.get(c);
  if (e === undefined) {          // only a key seen for the first time is kept, so only it is copied
    table.set(c, {key: (typeof k === "object" && k !== null) ? clone(k) : k, values: [v]});
    return;
  }
  const vs = e.values;
  vs.push(v);
  if (vs.length >= PILE) e.values = [reduceValues(e.key, vs)];
}
g.emit = emit;

g.__mongol_install = function (which, f) {
  if (typeof f !== "function") return typeof f;
  fns[which] = f;
  [mapper, reducer, finalizer] = fns;
  return "function";
};

g.__mongol_map = function (text) {
  g.__mongol_phase = 4;
  const docs = JSON.parse(text);
  g.__mongol_phase = 0;
  mapping = true;
  for (let i = 0; i < docs.length; i++) {
    const d = docs[i];
    reviveFields(d);
    mapper.call(d);
  }
  mapping = false;
};

// Hits read from a store by the worker: [docs, ids, times], where ids (strings) and times
// (milliseconds) are null or one per doc and go last into each doc as _id and time (a Date).
// Unless `tagged`, no doc holds a tagged value (the reader checked), so none needs reviving.
g.__mongol_map_hits = function (text, tagged) {
  g.__mongol_phase = 4;
  const batch = JSON.parse(text), docs = batch[0], ids = batch[1], times = batch[2];
  g.__mongol_phase = 0;
  mapping = true;
  for (let i = 0; i < docs.length; i++) {
    const d = docs[i];
    if (tagged) reviveFields(d);
    if (ids !== null) d._id = ids[i];
    if (times !== null) d.time = new Date(times[i]);
    mapper.call(d);
  }
  mapping = false;
};

// Reduce every key whose values were not reduced to one yet, finalize, and encode [[key, value], ...].
g.__mongol_finish = function () {
  const out = [];
  for (const e of table.values()) {
    let v = e.values.length === 1 ? e.values[0] : reduceValues(e.key, e.values);
    if (finalizer !== null) { g.__mongol_phase = 2; v = finalizer(e.key, v); }
    out.push([e.key, v]);
  }
  table = new Map();
  return encode(out);
};

function bucket(c, n) {
  const len = c.length, step = len > 64 ? len >> 6 : 1;
  let h = len;
  for (let i = 0; i < len; i += step) h = (Math.imul(h, 31) + c.charCodeAt(i)) | 0;
  return (h >>> 0) % n;
}

// This worker's share, reduced per key, split by key into n partitions of [canonical, key, value].
g.__mongol_partial = function (n, p) {
  if (parts === null) {
    const split = [];
    for (let i = 0; i < n; i++) split.push([]);
    for (const [c, e] of table) {
      const v = e.values.length === 1 ? e.values[0] : reduceValues(e.key, e.values);
      split[bucket(c, n)].push([c, e.key, v]);
    }
    table = new Map();
    parts = [];
    for (let i = 0; i < n; i++) { parts.push(encode(split[i])); split[i] = null; }
  }
  const text = parts[p];
  parts[p] = null;
  return text;
};

// Take in one partition from a worker; __mongol_finish then re-reduces keys that several workers saw.
g.__mongol_absorb = function (text) {
  g.__mongol_phase = 5;
  const entries = JSON.parse(text);
  for (let i = 0; i < entries.length; i++) {
    const [c, k, v] = entries[i];
    const e = table.get(c), value = reviveValue(v);
    if (e === undefined) table.set(c, {key: reviveValue(k), values: [value]});
    else e.values.push(value);
  }
};
})();

// The MongoDB shell helpers that map/reduce code commonly uses.
(function () {
"use strict";
const g = globalThis;
function define(o, name, f) {
  Object.defineProperty(o, name, {value: f, writable: true, configurable: true, enumerable: false});
}
function checkArray(a, name) {
  if (!Array.isArray(a)) throw new TypeError("the first argument to Array." + name + " must be an array");
}
define(Array, "sum", function (a) {
  checkArray(a, "sum");
  if (a.length === 0) return null;
  let s = a[0];
  for (let i = 1; i < a.length; i++) s += a[i];
  return s;
});
define(Array, "avg", function (a) {
  checkArray(a, "avg");
  if (a.length === 0) return null;
  return Array.sum(a) / a.length;
});
define(Array, "contains", function (a, x) {
  checkArray(a, "contains");
  for (let i = 0; i < a.length; i++) if (a[i] == x) return true;
  return false;
});
define(Array, "unique", function (a) {
  checkArray(a, "unique");
  const u = [];
  for (let i = 0; i < a.length; i++) if (!Array.contains(u, a[i])) u.push(a[i]);
  return u;
});
g.isNumber = function (x) { return typeof x === "number"; };
g.isString = function (x) { return typeof x === "string"; };
g.isObject = function (x) { return typeof x === "object"; };  // true for arrays and null, as in the shell

function pad(n, w) { return String(n).padStart(w, "0"); }
function isoDate(d) {
  if (d.getTime() !== d.getTime()) return "ISODate(\"Invalid Date\")";
  let sec = pad(d.getUTCSeconds(), 2);
  if (d.getUTCMilliseconds()) sec += "." + pad(d.getUTCMilliseconds(), 3);
  return "ISODate(\"" + pad(d.getUTCFullYear(), 4) + "-" + pad(d.getUTCMonth() + 1, 2) + "-" +
    pad(d.getUTCDate(), 2) + "T" + pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2) + ":" + sec + "Z\")";
}
function tojsonObject(x, indent, nolint) {
  const end = nolint ? " " : "\n", tab = nolint ? "" : "\t";
  if (x instanceof Date) return isoDate(x);
  if (x instanceof RegExp || x instanceof Error) return String(x);
  if (Array.isArray(x)) {
    if (x.length === 0) return "[ ]";
    const inner = nolint ? "" : indent + tab;
    const items = x.map(function (v) { return inner + tojson(v, inner, nolint); });
    return "[" + end + items.join("," + end) + end + (nolint ? "" : indent) + "]";
  }
  const inner = indent + tab;
  const fields = Object.keys(x).map(function (k) {
    return inner + JSON.stringify(k) + " : " + tojson(x[k], inner, nolint);
  });
  return "{" + end + (fields.length ? fields.join("," + end) : inner) + end + inner.substring(1) + "}";
}
function tojson(x, indent, nolint) {
  if (x === null) return "null";
  if (x === undefined) return "undefined";
  indent = indent || "";
  switch (typeof x) {
    case "string": return JSON.stringify(x);
    case "number": case "boolean": case "bigint": return String(x);
    case "object": {
      let s = tojsonObject(x, indent, nolint);
      if ((nolint == null || nolint === true) && s.length < 80 && indent.length === 0) {
        s = s.replace(/[\t\r\n]+/gm, " ");
      }
      return s;
    }
    case "function": return x.toString();
    default: throw new TypeError("tojson cannot handle type " + typeof x);
  }
}
g.tojson = tojson;
g.tojsononeline = function (x) { return tojson(x, " ", true); };
})();
"""


def _js_error_text(exc: BaseException, limit: int = 300) -> str:
    """The first line of a JavaScript exception: "TypeError: cannot read property 'x' of undefined"."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    if len(first) > limit:
        first = first[:limit] + "..."
    if len(lines) > 1 and lines[1] == "undefined":  # something other than an Error was thrown
        return f"uncaught exception: {first}"
    return first


_SYNTAX_AT = re.compile(r"at <input>:(\d+):(\d+)")


def _compile_check(ctx: Any, option: str, source: str) -> None:
    """Raise CompileError unless `source` is one JavaScript expression; runs none of it.

    QuickJS compiles a whole script before running its first statement, so a script that starts
    with `throw` shows whether the rest compiles without executing it. The source must compile both
    as `(SOURCE)` and as `(0 ? SOURCE : 0)`. Breaking out of the first takes an unmatched `)`; out of
    the second, that or a `:` outside any `?`, both of which the first rejects. So the source is one
    expression in both, and the second (where a top-level comma cannot appear) makes it a single one.
    """
    if not isinstance(source, str):
        raise CompileError(option, f"{option} must be JavaScript source text, not {type(source).__name__}")
    if not source.strip():
        raise CompileError(option, f"{option} is empty: expected a function such as function () {{ ... }}")
    import quickjs

    # The source starts at line 2, column 1 of each wrapper, so error positions map back directly.
    for prefix, suffix in (("throw 0; (\n", "\n)"), ("throw 0; (0 ? \n", "\n : 0)")):
        try:
            ctx.eval(prefix + source + suffix)
        except quickjs.JSException as exc:
            text = str(exc)
            if not text.startswith("SyntaxError"):
                if text.startswith("0"):  # our `throw 0`: it compiled
                    continue
                raise CompileError(option, f"{option} does not compile: {_js_error_text(exc)}") from None
            where = ""
            m = _SYNTAX_AT.search(text)
            if m:
                line = int(m.group(1)) - 1
                if 1 <= line <= source.count("\n") + 1:
                    where = f" (line {line}, column {m.group(2)})"
                else:
                    where = " (at the end)"
            raise CompileError(option, f"{option} does not compile: {_js_error_text(exc)}{where}") from None
    if not _FUNCTION_START.match(_strip_leading_comments(source)):
        raise CompileError(option, f"{option} is not a function expression: expected function (...) {{ ... }} "
                                   f"or an arrow function")


_FUNCTION_START = re.compile(r"(?:async\b\s*)?(?:function\b|\(|[A-Za-z_$][\w$]*\s*=>)")
_LEADING_COMMENTS = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)


def _strip_leading_comments(source: str) -> str:
    return source[_LEADING_COMMENTS.match(source).end():]


def _sources(mapper: str, reducer: str, finalize: str | None) -> list[str | None]:
    if isinstance(finalize, str) and not finalize.strip():
        finalize = None
    return [mapper, reducer, finalize]


def check_compiles(mapper: str, reducer: str, finalize: str | None = None) -> None:
    """Raise CompileError naming the option whose source does not compile (must be a function expression).

    Nothing of the sources runs here: this is a syntax check plus a check that each source is a
    single expression starting like a function. That it really evaluates to a function is checked,
    inside a worker, when a run starts. A blank `finalize` counts as none.
    """
    import quickjs  # imported late: importing it starts a thread, which a program that never checks JS can skip

    ctx = quickjs.Context()
    ctx.set_memory_limit(64 * 1024 * 1024)
    ctx.set_time_limit(5)  # parsing only, but a huge source should not stall the caller
    for option, source in zip(OPTIONS, _sources(mapper, reducer, finalize), strict=True):
        if source is not None:
            _compile_check(ctx, option, source)


# ---------------------------------------------------------------------------------------------
# Conversion between Python and the JSON that crosses into JavaScript


def _encode_default(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return {_DATE: (value - _EPOCH) // timedelta(milliseconds=1)}
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"a hit field holds a {type(value).__name__}, which cannot be passed to JavaScript")


# Object.prototype members that see the whole object (or hand it out, like valueOf).
_PROTOTYPE_NAMES = frozenset({
    "constructor", "__proto__", "hasOwnProperty", "isPrototypeOf", "propertyIsEnumerable", "toLocaleString",
    "toString", "valueOf", "__defineGetter__", "__defineSetter__", "__lookupGetter__", "__lookupSetter__",
})
_THIS = re.compile(r"\bthis\b")
# An ASCII name not followed by more of a (non-ASCII) identifier.
_THIS_FIELD = re.compile(r"this\s*\.\s*([A-Za-z_$][A-Za-z0-9_$]*+)(?![^\x00-\x7f])")


def _mapper_fields(source: str) -> frozenset[str] | None:
    """The hit fields a mapper can observe, if it reads the hit only as `this.name`; None means all.

    Parsing the JSON of a hit is most of the engine's work per hit, so handing over only the fields
    that the mapper reads pays. Without a bare `this` (passed on, iterated, `in`, `this[...]`,
    `valueOf()`) or a direct `eval`, a mapper has no way to see any other field. The check errs on the
    side of None: a `this` in a string or comment, a non-ASCII field name or a unicode escape anywhere
    turns it off.
    """
    if "\\u" in source or re.search(r"\beval\b", source):
        return None
    fields = set()
    for match in _THIS.finditer(source):
        field = _THIS_FIELD.match(source, match.start())
        if field is None:
            return None
        fields.add(field.group(1))
    if fields & _PROTOTYPE_NAMES:
        return None
    return frozenset(fields)


def _encode_batch(batch: list[dict], fields: frozenset[str] | None = None) -> bytes:
    if fields is not None:
        batch = [{k: hit[k] for k in fields if k in hit} for hit in batch]
    try:
        return orjson.dumps(batch, default=_encode_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError as exc:  # orjson.JSONEncodeError
        raise MapReduceError(f"cannot pass the hits to JavaScript: {exc}") from None


def _from_js(x: Any) -> Any:
    """Python value of one decoded JSON value from the engine (see the module docstring)."""
    t = type(x)
    if t is dict:
        if len(x) == 1:
            if _DATE in x:
                return _datetime(x[_DATE])
            if _NUMBER in x:
                return float(x[_NUMBER])
        return {k: _from_js(v) for k, v in x.items()}
    if t is list:
        return [_from_js(v) for v in x]
    if t is int and not -_MAX_SAFE <= x <= _MAX_SAFE:
        return float(x)
    return x


def _datetime(ms: int | float | None) -> datetime | None:
    if ms is None:  # an invalid Date
        return None
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise MapReduceError(f"a JavaScript Date ({ms} ms since 1970) is outside the years 1 to 9999") from None


def _decode_results(data: bytes) -> list[tuple[Any, Any]]:
    try:
        pairs = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MapReduceError(f"cannot read the results back from JavaScript: {exc}") from None
    return [(_from_js(k), _from_js(v)) for k, v in pairs]


# ---------------------------------------------------------------------------------------------
# The worker process
#
# Messages are bytes: one opcode byte, then a payload. Nothing from a worker is unpickled, so even
# a worker whose engine were subverted could not run code in the parent.
#
# parent -> worker                               worker -> parent
#   B allowance:f8 json   map a batch              R                         ready (functions compiled)
#   S allowance:f8 json   read and map a part      A used:f8                 batch done
#   L allowance:f8        new allowance            U used:f8 hits:u4         more hits of a part mapped
#   P allowance:f8 n:u4   split into n partitions  D used:f8 hits:u4         part done (its last hits)
#   I json                absorb a partition       Q json                    one partition (n of them)
#   F allowance:f8        finish                   O used:f8 json            results
#                                                  E json                    error, then the worker exits
# `allowance` is the CPU time the worker may use in all (the budget minus what the others used);
# `used` is the worker's JavaScript CPU time so far. S and L only come with a HitSource: the worker
# reads the part (a JSON value the source made in the parent) itself and reports its progress (U)
# every REPORT_EVERY seconds; L, sent on such reports, keeps each one's allowance current within a part.

_F8 = struct.Struct("<d")
_F8U4 = struct.Struct("<dI")


# How the binding shows a thrown null (a thrown "null" string reads "null\nundefined"). QuickJS throws
# null itself when it runs out of memory so completely that it cannot even allocate the error object,
# and the memory is freed again by the time the exception arrives, so nothing in the engine tells the
# two apart afterwards. A null can only come from the user's code through a `throw` (or a generator's
# throw()), or through code it builds at run time (eval, Function, a function's constructor): a null
# from functions whose source names none of these is the engine running out of memory.
_THROWN_NULL = "null\n"
_MAY_THROW = re.compile(r"\b(?:throw|eval|Function|constructor)\b")


class _Fatal(Exception):
    """Raised inside a worker for an error to report to the parent."""

    def __init__(self, kind: str, option: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.option, self.message = kind, option, message


class _Engine:
    """One QuickJS context with the driver and the user's functions, and its CPU accounting."""

    def __init__(self, sources: list[str | None], limits: Limits) -> None:
        import quickjs

        self.quickjs = quickjs
        self.limits = limits
        self.used = 0.0
        self.allowance = limits.cpu_seconds
        # A null exception means out of memory unless the user's code itself can throw one.
        self.may_throw_null = any(source is not None and _MAY_THROW.search(source) for source in sources)
        self.ctx = quickjs.Context()
        self.ctx.set_memory_limit(limits.memory_mb * 1024 * 1024)
        self.ctx.eval(_DRIVER)
        self.map_ = self.ctx.get("__mongol_map")
        self.map_hits_ = self.ctx.get("__mongol_map_hits")
        self.finish_ = self.ctx.get("__mongol_finish")
        self.partial_ = self.ctx.get("__mongol_partial")
        self.absorb_ = self.ctx.get("__mongol_absorb")
        for which, (option, source) in enumerate(zip(OPTIONS, sources, strict=True)):
            if source is None:
                continue
            try:
                _compile_check(self.ctx, option, source)
            except CompileError as exc:
                raise _Fatal("compile", option, str(exc)) from None
            # _compile_check proved the source a single expression: it cannot break out of the call.
            kind = self._call(self.ctx.eval, f"__mongol_install({which}, (\n{source}\n))", option=option,
                              compiling=True)
            if kind != "function":
                what = kind if kind in ("undefined", "null") else ("an " if kind[0] in "aeiou" else "a ") + kind
                raise _Fatal("compile", option, f"{option} is not a function: it evaluates to {what}")

    def _call(self, fn: Any, *args: Any, option: str | None = None, compiling: bool = False,
              next_up: str = "mapper") -> Any:
        """Call into JavaScript with the remaining CPU budget.

        Errors name `option`, else what the driver was doing; if no budget is left, `next_up`.
        """
        remaining = self.allowance - self.used
        if remaining <= 0:
            raise _Fatal("run", option or next_up, self._cpu_message(option or next_up))
        self.ctx.set_time_limit(remaining)
        start = time.process_time()
        try:
            return fn(*args)
        except self.quickjs.JSException as exc:
            option = option or self._phase()
            text = str(exc)
            if text.startswith("InternalError: interrupted"):
                raise _Fatal("run", option, self._cpu_message(option)) from None
            # Out of memory, QuickJS throws InternalError("out of memory"), or null when even that
            # error cannot be allocated (the usual case when many small allocations fill the limit).
            if "out of memory" in text.split("\n", 1)[0] or (text == _THROWN_NULL and not self.may_throw_null):
                raise _Fatal("run", option, f"{option} exceeded the memory limit of {self.limits.memory_mb} MB "
                                            f"(JavaScript memory per worker)") from None
            if text == _THROWN_NULL:  # the user's code may have thrown it, or the engine ran out of memory
                raise _Fatal("run", option, f"{option} failed: uncaught exception: null (or it exceeded the "
                                            f"memory limit of {self.limits.memory_mb} MB)") from None
            if compiling:
                raise _Fatal("compile", option, f"{option} does not evaluate to a function: "
                                                f"{_js_error_text(exc)}") from None
            raise _Fatal("run", option, f"{option} failed: {_js_error_text(exc)}") from None
        finally:
            self.used += time.process_time() - start

    def _cpu_message(self, option: str) -> str:
        return (f"{option} exceeded the CPU time limit of {self.limits.cpu_seconds:g} s "
                f"(JavaScript CPU time for the whole run)")

    def _phase(self) -> str:
        try:
            self.ctx.set_time_limit(-1)
            return _PHASES[int(self.ctx.get("__mongol_phase"))]
        except Exception:  # the context may be out of memory: fall back to a generic name
            return "map/reduce"

    def map(self, text: str) -> None:
        self._call(self.map_, text)

    def map_hits(self, text: str, tagged: bool) -> None:
        self._call(self.map_hits_, text, tagged)

    def finish(self) -> str:
        return self._call(self.finish_, next_up="reducer")

    def partial(self, n: int) -> list[str]:
        return [self._call(self.partial_, n, p, next_up="reducer") for p in range(n)]

    def absorb(self, text: str) -> None:
        self._call(self.absorb_, text, next_up="merging the results")


def _worker_main(conn: Connection, sources: list[str | None], limits: Limits, hits: HitSource | None = None) -> None:
    """Entry point of a spawned worker: serve the parent's messages until it hangs up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the whole group
    try:
        engine = _Engine(sources, limits)
        conn.send_bytes(b"R")
        # A reader thread keeps the pipe drained while the engine (which releases the GIL) works,
        # so the parent never blocks sending to a busy worker and can feed the others meanwhile.
        inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=_read_all, args=(conn, inbox, engine), daemon=True).start()
        while (msg := inbox.get()) is not None:
            op = msg[:1]
            if op == b"B":
                (engine.allowance,) = _F8.unpack_from(msg, 1)
                engine.map(msg[1 + _F8.size:].decode())
                conn.send_bytes(b"A" + _F8.pack(engine.used))
            elif op == b"S":
                # The others' use only grows: an L that overtook this message is the more recent.
                engine.allowance = min(engine.allowance, _F8.unpack_from(msg, 1)[0])
                mapped, reported = 0, time.monotonic()
                for count, text, tagged in _read_part(hits, orjson.loads(msg[1 + _F8.size:])):  # type: ignore[arg-type]
                    engine.map_hits(text, tagged)
                    mapped += count
                    if time.monotonic() - reported >= REPORT_EVERY:
                        conn.send_bytes(b"U" + _F8U4.pack(engine.used, mapped))
                        mapped, reported = 0, time.monotonic()
                conn.send_bytes(b"D" + _F8U4.pack(engine.used, mapped))
            elif op == b"I":
                engine.absorb(msg[1:].decode())
            elif op == b"P":
                engine.allowance, n = _F8U4.unpack_from(msg, 1)
                for text in engine.partial(n):
                    conn.send_bytes(b"Q" + text.encode())
                conn.send_bytes(b"A" + _F8.pack(engine.used))
            elif op == b"F":
                (engine.allowance,) = _F8.unpack_from(msg, 1)
                text = engine.finish()
                conn.send_bytes(b"O" + _F8.pack(engine.used) + text.encode())
    except _Fatal as exc:
        _send_error(conn, exc.kind, exc.option, exc.message)
    except BaseException as exc:  # report anything else, then exit
        _send_error(conn, "run", "map/reduce", f"map/reduce worker failed: {type(exc).__name__}: {exc}")
    # Leave without tearing the engine down: after an error the context may be in any state.
    os._exit(0)


def _read_all(conn: Connection, inbox: queue.SimpleQueue, engine: _Engine) -> None:
    try:
        while True:
            msg = conn.recv_bytes()
            if msg[:1] == b"L":  # applies at once, also to the part being read
                engine.allowance = min(engine.allowance, _F8.unpack_from(msg, 1)[0])
            else:
                inbox.put(msg)
    except (EOFError, OSError):
        inbox.put(None)


def _read_part(hits: HitSource, part: Any) -> Iterator[tuple[int, str, bool]]:
    """hits.read(part), its store errors reported as the worker's error."""
    batches = iter(hits.read(part))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except MongolError as exc:
            raise _Fatal("run", "reading the hits", str(exc)) from None
        yield batch


def _send_error(conn: Connection, kind: str, option: str, message: str) -> None:
    with contextlib.suppress(OSError):
        conn.send_bytes(b"E" + orjson.dumps({"kind": kind, "option": option, "message": message}))


# ---------------------------------------------------------------------------------------------
# The parent side


class _Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.credits = 0  # batches it may be sent now; 0 until it is ready
        self.ready = False
        self.used = 0.0  # its JavaScript CPU time, as last reported
        self.replies: list[bytes] = []  # Q and O messages, in order


class _Pool:
    """Worker processes fed round-robin (or handed parts of a HitSource to read); every wait on them
    also watches for their death."""

    def __init__(self, sources: list[str | None], limits: Limits, hits: HitSource | None = None) -> None:
        self.sources = sources
        self.limits = limits
        self.hits = hits
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.next = 0
        self.stall = limits.cpu_seconds + STALL_SLACK_SECONDS
        self.mapped = 0  # hits the workers reported mapped (reading a HitSource)
        self.told = 0.0  # when the workers' allowances were last sent

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(abort=exc_info[0] is not None)

    def start(self, count: int) -> None:
        for _ in range(count):
            parent_end, child_end = self.context.Pipe()
            process = self.context.Process(target=_worker_main,
                                           args=(child_end, self.sources, self.limits, self.hits),
                                           name="mongol-mapreduce", daemon=True)
            try:
                process.start()
            finally:
                child_end.close()  # so that the parent's end breaks when the worker dies
            self.workers.append(_Worker(process, parent_end))

    def close(self, abort: bool) -> None:
        for w in self.workers:
            if abort and w.process.is_alive():
                w.process.terminate()
            w.conn.close()  # a healthy worker exits when its pipe closes
        for w in self.workers:
            w.process.join(5)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.process.close()
        self.workers = []

    def allowance(self, worker: _Worker) -> float:
        """CPU time `worker` may have used in all: the budget minus what the others reported."""
        return self.limits.cpu_seconds - sum(w.used for w in self.workers if w is not worker)

    def send(self, worker: _Worker, data: bytes) -> None:
        try:
            worker.conn.send_bytes(data)
        except OSError:
            pass
        else:
            return
        self._died(worker)

    def dispatch(self, data: bytes) -> None:
        """Send one encoded batch to the next worker (round-robin) that has room for it."""
        while True:
            n = len(self.workers)
            for i in range(n):
                w = self.workers[(self.next + i) % n]
                if w.credits > 0:
                    w.credits -= 1
                    self.next = (self.next + i + 1) % n
                    self.send(w, b"B" + _F8.pack(self.allowance(w)) + data)
                    return
            self.pump()

    def scan(self, parts: Iterable[tuple[int, Any]]) -> Iterator[int]:
        """Have the workers read and map `parts` of the HitSource, each part going to the worker with
        the least queued; yields how many more hits were mapped, as the workers report them."""
        told = 0
        for _, part in parts:
            while True:
                worker = max(self.workers, key=lambda w: w.credits)  # 0 credits until ready
                if worker.credits > CREDITS - SCAN_AHEAD:
                    break
                self.pump()
                if self.mapped > told:
                    yield self.mapped - told
                    told = self.mapped
            worker.credits -= 1
            self.send(worker, b"S" + _F8.pack(self.allowance(worker)) + orjson.dumps(part))
        while not all(w.ready and w.credits == CREDITS for w in self.workers):
            self.pump()
            if self.mapped > told:
                yield self.mapped - told
                told = self.mapped

    def _tell_allowances(self) -> None:
        """Send each worker its current allowance, at most every ALLOWANCE_EVERY seconds."""
        now = time.monotonic()
        if now - self.told < ALLOWANCE_EVERY:
            return
        self.told = now
        for w in self.workers:
            if w.ready:
                self.send(w, b"L" + _F8.pack(self.allowance(w)))

    def pump(self) -> None:
        """Wait for the next message from any worker and handle it (or notice a death)."""
        conns = {w.conn: w for w in self.workers}
        sentinels = {w.process.sentinel: w for w in self.workers}
        ready = wait([*conns, *sentinels], timeout=self.stall)
        if not ready:
            raise MapReduceError(f"a map/reduce worker stopped responding for {self.stall:g} s")
        for obj in ready:
            if obj in conns:
                self._receive(conns[obj])
        for obj in ready:
            if obj in sentinels:
                self._died(sentinels[obj])

    def _receive(self, worker: _Worker) -> None:
        try:
            msg = worker.conn.recv_bytes()
        except (EOFError, OSError):
            msg = b""
        if not msg:
            self._died(worker)
        op = msg[:1]
        if op == b"R":
            worker.ready = True
            worker.credits = CREDITS
        elif op == b"A":
            (worker.used,) = _F8.unpack_from(msg, 1)
            worker.credits += 1
        elif op == b"U":
            worker.used, count = _F8U4.unpack_from(msg, 1)
            self.mapped += count
            self._tell_allowances()
        elif op == b"D":
            worker.used, count = _F8U4.unpack_from(msg, 1)
            self.mapped += count
            worker.credits += 1
        elif op in (b"Q", b"O"):
            worker.replies.append(msg)
        elif op == b"E":
            self._raise(msg[1:])
        else:
            raise MapReduceError(f"a map/reduce worker sent an unknown message {op!r}")

    def _raise(self, payload: bytes) -> NoReturn:
        error = orjson.loads(payload)
        if error["kind"] == "compile":
            raise CompileError(error["option"], error["message"])
        raise MapReduceError(error["message"])

    def _died(self, worker: _Worker) -> NoReturn:
        """A worker is gone: raise the error it reported before exiting, else say how it died."""
        with contextlib.suppress(EOFError, OSError):
            while worker.conn.poll():
                msg = worker.conn.recv_bytes()
                if msg[:1] == b"E":
                    self._raise(msg[1:])
        worker.process.join(5)
        code = worker.process.exitcode
        if code is not None and code < 0:
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        else:
            how = f"exited unexpectedly (exit code {code})"
        raise MapReduceError(f"a map/reduce worker {how}; if it was the out-of-memory killer, lower memory_mb")

    def wait_until(self, done: Any) -> None:
        while not done():
            self.pump()

    def finish(self) -> list[tuple[Any, Any]]:
        self.wait_until(lambda: all(w.ready for w in self.workers))
        # Let every queued batch be processed so that the CPU accounting is current.
        self.wait_until(lambda: all(w.credits == CREDITS for w in self.workers))
        if len(self.workers) == 1:
            return _decode_results(self._final(self.workers[0]))
        n = len(self.workers)
        for w in self.workers:
            w.credits -= 1
            self.send(w, b"P" + _F8U4.pack(self.allowance(w), n))
        self.wait_until(lambda: all(w.credits == CREDITS for w in self.workers))
        partitions = [w.replies for w in self.workers]
        for w in self.workers:
            w.replies = []
        for p, w in enumerate(self.workers):
            for replies in partitions:
                self.send(w, b"I" + replies[p][1:])
                replies[p] = b""
        for w in self.workers:
            self.send(w, b"F" + _F8.pack(self.allowance(w)))
        self.wait_until(lambda: all(w.replies for w in self.workers))
        results: list[tuple[Any, Any]] = []
        for w in self.workers:
            results.extend(_decode_results(self._output(w)))
        return results

    def _final(self, worker: _Worker) -> bytes:
        self.send(worker, b"F" + _F8.pack(self.allowance(worker)))
        self.wait_until(lambda: bool(worker.replies))
        return self._output(worker)

    def _output(self, worker: _Worker) -> bytes:
        msg = worker.replies.pop()
        (worker.used,) = _F8.unpack_from(msg, 1)
        return msg[1 + _F8.size:]


def _batches(hits: Iterable[dict]) -> Iterator[list[dict]]:
    it = iter(hits)
    while batch := list(islice(it, BATCH_SIZE)):
        yield batch


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_reduce(hits: Iterable[dict], mapper: str, reducer: str, finalize: str | None = None, *,
               limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> list[tuple[Any, Any]]:
    """(key, value) pairs, one per distinct emitted key, in no particular order.

    Runs `mapper` with each hit as `this`, `reducer` on the values emitted for each key (possibly
    several times, on its own output), then `finalize` on each key, with MongoDB's semantics.
    `workers=None` uses one worker process, and as many as there are CPUs once more than
    SPLIT_AFTER hits arrive; each worker's JavaScript context has its own `limits.memory_mb`.
    The results are the same for any number of workers, given a reducer that MongoDB accepts
    (one whose result does not depend on how the values are grouped; float sums may differ in
    their last digits).

    Workers are started with multiprocessing's "spawn" method, which imports the calling program's
    `__main__` module again in each worker: keep a script's work, and any gevent monkey-patching,
    under `if __name__ == "__main__":`.
    """
    return map_reduce_encoded(encoded_batches(hits, mapper), mapper, reducer, finalize, limits=limits, workers=workers)


def encoded_batches(hits: Iterable[dict], mapper: str) -> Iterator[tuple[int, bytes]]:
    """Hits as map_reduce_encoded takes them: (count, JSON array) per batch, only the fields the mapper reads."""
    fields = _mapper_fields(mapper)
    for batch in _batches(hits):
        yield len(batch), _encode_batch(batch, fields)


def map_reduce_encoded(batches: Iterable[tuple[int, bytes]], mapper: str, reducer: str, finalize: str | None = None,
                       *, limits: Limits = DEFAULT_LIMITS, workers: int | None = None) -> list[tuple[Any, Any]]:
    """map_reduce over batches already encoded: (number of hits, a JSON array of them), each hit with
    at least the fields `mapper_fields(mapper)` names, and dates as `{DATE_TAG: milliseconds}`.
    A store that can write that JSON itself spares the parent decoding and encoding every hit."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    sources = _sources(mapper, reducer, finalize)
    check_compiles(*sources)
    target = workers or _cpu_count()
    with _Pool(sources, limits) as pool:
        pool.start(1 if workers is None else workers)
        seen = 0
        for count, batch in batches:
            pool.dispatch(batch)
            seen += count
            if len(pool.workers) < target and seen > SPLIT_AFTER:
                pool.start(target - len(pool.workers))
        return pool.finish()


def map_reduce_source(hits: HitSource, mapper: str, reducer: str, finalize: str | None = None, *,
                      limits: Limits = DEFAULT_LIMITS, workers: int | None = None,
                      progress: Callable[[Iterator[tuple[int, bytes]], int], Iterator[tuple[int, bytes]]] | None
                      = None) -> list[tuple[Any, Any]]:
    """map_reduce over hits that the workers read themselves, so that no hit passes through the
    parent (which only hands out the parts): the same results as map_reduce over the same hits.

    With `workers=None`, one worker, or as many as there are CPUs once the parts hold more than
    SPLIT_AFTER hits. `progress`, given, wraps an iterator of (hits mapped since the last item, b"")
    with the hit count, and must yield what it wraps (a progress bar: see mongol.report.compute).
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    sources = _sources(mapper, reducer, finalize)
    check_compiles(*sources)
    parts: Iterator[tuple[int, Any]] = iter(hits.parts())
    if workers is None:
        head, planned = [], 0
        for size, part in parts:
            head.append((size, part))
            planned += size
            if planned > SPLIT_AFTER:
                break
        workers = _cpu_count() if planned > SPLIT_AFTER else 1
        parts = chain(head, parts)
    with _Pool(sources, limits, hits) as pool:
        pool.start(workers)
        ticks: Iterator[tuple[int, bytes]] = ((count, b"") for count in pool.scan(parts))
        if progress is not None:
            ticks = progress(ticks, hits.count())
        for _ in ticks:
            pass
        return pool.finish()


def mapper_fields(mapper: str) -> frozenset[str] | None:
    """The hit fields a mapper can observe (None: it may see them all): what a batch must hold."""
    return _mapper_fields(mapper.strip())
