"""Map/reduce in the real engine and real worker processes, checked against results computed here in Python."""

import math
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from mongol.errors import StoreError
from mongol.mapreduce import (
    CompileError,
    Limits,
    MapReduceError,
    check_compiles,
    map_reduce,
    map_reduce_source,
)
from mongol.mapreduce.engine import Engine

T0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)
MAPPER = "function () { emit({url: this.url, title: this.title}, this.pageviews); }"
REDUCER = "function (k, v) { return Array.sum(v); }"
SUM = REDUCER


def make_hits(n, urls=7, every_title=3):
    """Hits over several days; every `every_title`-th hit has no title."""
    hits = []
    for i in range(n):
        hit = {"_id": f"{i:024x}", "time": T0 + timedelta(minutes=97 * i), "site": "example.com",
               "url": f"/p/{i % urls}", "pageviews": 1 + i % 3, "_ip": "192.0.2.1", "_ua": "test"}
        if i % every_title:
            hit["title"] = f"Title {i % urls}"
        hits.append(hit)
    return hits


def shape(x):
    """A hashable form that keeps what Python's == would blur: dict field order, int vs bool vs str."""
    if isinstance(x, dict):
        return ("dict", tuple((k, shape(v)) for k, v in x.items()))
    if isinstance(x, list):
        return ("list", tuple(shape(v) for v in x))
    return (type(x).__name__, x)


def as_mapping(pairs):
    """{shape(key): value}, failing if a key came back twice."""
    out = {shape(k): v for k, v in pairs}
    assert len(out) == len(pairs), "a key was returned more than once"
    return out


def default_report(hits):
    expected = Counter()
    for hit in hits:
        key = {"url": hit["url"]}
        if "title" in hit:
            key["title"] = hit["title"]
        expected[shape(key)] += hit["pageviews"]
    return dict(expected)


# --- results -------------------------------------------------------------------------------------


def test_default_mapper_and_reducer_with_and_without_title():
    hits = make_hits(500)
    result = map_reduce(hits, MAPPER, REDUCER)
    assert as_mapping(result) == default_report(hits)
    no_title = [k for k, _ in result if "title" not in k]
    assert no_title and all(list(k) == ["url"] for k in no_title)  # undefined fields are left out
    assert all(type(v) is int for _, v in result)


def test_no_hits():
    assert map_reduce([], MAPPER, REDUCER) == []
    assert map_reduce(iter([]), MAPPER, REDUCER, workers=2) == []


def test_rereduce_with_many_values_for_one_key():
    # Counting with {count: n} objects is only right if reduce accepts its own output as input.
    hits = [{"url": "/only", "n": i} for i in range(25_000)] + [{"url": "/other", "n": 1}, {"url": "/other", "n": 2}]
    reducer = """function (key, values) {
        var total = 0, calls = 0;
        values.forEach(function (v) { total += v.count; calls += v.calls; });
        return {count: total, calls: calls + 1};
    }"""
    for workers in (1, 2):
        result = as_mapping(map_reduce(hits, "function () { emit(this.url, {count: 1, calls: 0}); }", reducer,
                                       workers=workers))
        only = result[shape("/only")]
        assert only["count"] == 25_000
        assert only["calls"] > 1  # it was reduced more than once, partly on reduced values
        assert result[shape("/other")] == {"count": 2, "calls": 1}


def test_a_key_emitted_once_is_not_reduced():
    hits = [{"k": "once"}, {"k": "twice"}, {"k": "twice"}]
    for workers in (1, 2):
        result = as_mapping(map_reduce(hits, "function () { emit(this.k, 1); }", "function () { return 'reduced'; }",
                                       workers=workers))
        assert result == {shape("once"): 1, shape("twice"): "reduced"}


def test_finalize_runs_on_every_key():
    hits = make_hits(100)
    finalize = "function (key, value) { return {url: key, views: value, half: value / 2}; }"
    result = map_reduce(hits, "function () { emit(this.url, this.pageviews); }", SUM, finalize)
    views = Counter()
    for hit in hits:
        views[hit["url"]] += hit["pageviews"]
    assert len(result) == len(views)
    for key, value in result:
        assert value == {"url": key, "views": views[key], "half": views[key] / 2}


def test_several_emits_per_hit():
    hits = [{"tags": ["a", "b"]}, {"tags": ["b", "c", "b"]}, {"tags": []}]
    result = map_reduce(hits, "function () { this.tags.forEach(function (t) { emit(t, 1); }); emit('hits', 1); }",
                        SUM)
    expected = Counter(t for hit in hits for t in hit["tags"])
    expected["hits"] = len(hits)
    assert dict(result) == dict(expected)


def test_key_equality_follows_bson():
    mapper = """function () {
        emit({a: 1, b: 2}, 1); emit({b: 2, a: 1}, 1); emit({a: 1, b: 2}, 1);
        emit(1, 1); emit(1.0, 1); emit("1", 1); emit(2.5, 1); emit(true, 1);
        emit("x", 1); emit("X", 1);
        emit([1, "x"], 1); emit(["x", 1], 1); emit([1, "x"], 1);
        emit(null, 1); emit(undefined, 1);
        emit({d: new Date(0)}, 1); emit({d: new Date(0).toISOString()}, 1);
        emit({n: {a: [1, {b: 2}]}}, 1);
    }"""
    hits = [{}, {}, {}]
    result = as_mapping(map_reduce(hits, mapper, SUM))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    per_hit = {
        shape({"a": 1, "b": 2}): 2, shape({"b": 2, "a": 1}): 1,
        shape(1): 2, shape("1"): 1, shape(2.5): 1, shape(True): 1,
        shape("x"): 1, shape("X"): 1,
        shape([1, "x"]): 2, shape(["x", 1]): 1,
        shape(None): 2,
        shape({"d": epoch}): 1, shape({"d": "1970-01-01T00:00:00.000Z"}): 1,
        shape({"n": {"a": [1, {"b": 2}]}}): 1,
    }
    assert result == {k: 3 * n for k, n in per_hit.items()}


def test_dates_as_keys_truncated_to_the_day():
    hits = make_hits(300)
    mapper = """function () {
        var day = new Date(this.time.getTime());
        day.setUTCHours(0, 0, 0, 0);
        emit(day, this.pageviews);
    }"""
    expected = Counter()
    for hit in hits:
        expected[hit["time"].replace(hour=0, minute=0, second=0, microsecond=0)] += hit["pageviews"]
    result = map_reduce(hits, mapper, SUM)
    assert dict(result) == dict(expected)
    assert all(k.tzinfo is not None and k.utcoffset() == timedelta(0) for k, _ in result)


def test_values_convert_both_ways():
    when = datetime(2026, 2, 3, 4, 5, 6, 789999, tzinfo=UTC)
    hit = {"s": "é\u2603", "l": ["a", "b"], "i": 7, "f": 1.25, "two": 2.0, "b": False, "z": None, "time": when,
           "nested": {"when": when, "xs": [1, 2.5, {"deep": when}]}}
    mapper = """function () {
        emit("v", {
            s: this.s, l: this.l, i: this.i, f: this.f, two: this.two, b: this.b, z: this.z, nested: this.nested,
            time: this.time, isDate: this.time instanceof Date, deepIsDate: this.nested.xs[2].deep instanceof Date,
            undef: undefined, missing: this.missing, fn: function () {},
            nan: NaN, inf: -Infinity, big: Math.pow(2, 53) + 2, safe: Math.pow(2, 53), half: 0.5, negzero: -0,
            jsdate: new Date(Date.UTC(2020, 1, 29, 23, 59, 59, 5)), arr: [1, undefined, null], empty: {},
        });
    }"""
    ((key, value),) = map_reduce([hit], mapper, "function () { throw new Error('not called'); }")
    in_ms = when.replace(microsecond=789000)
    assert key == "v"
    nan = value.pop("nan")
    assert isinstance(nan, float) and math.isnan(nan)
    assert value == {
        "s": "é\u2603", "l": ["a", "b"], "i": 7, "f": 1.25, "two": 2, "b": False, "z": None,
        "nested": {"when": in_ms, "xs": [1, 2.5, {"deep": in_ms}]},
        "time": in_ms, "isDate": True, "deepIsDate": True,
        "inf": -math.inf, "big": float(2**53 + 2), "safe": 2**53, "half": 0.5, "negzero": 0,
        "jsdate": datetime(2020, 2, 29, 23, 59, 59, 5000, tzinfo=UTC), "arr": [1, None, None], "empty": {},
    }
    assert type(value["two"]) is int and type(value["big"]) is float and type(value["safe"]) is int


def test_emitted_objects_are_copies():
    # The mapper reuses one object for two keys and changes it afterwards; the reducer changes its input.
    mapper = "function () { var v = {n: 1}; emit('a', v); emit('b', v); v.n = 100; }"
    reducer = "function (k, vs) { var r = vs[0]; for (var i = 1; i < vs.length; i++) r.n += vs[i].n; return r; }"
    result = dict(map_reduce([{}, {}, {}], mapper, reducer))
    assert result == {"a": {"n": 3}, "b": {"n": 3}}


def test_emitted_keys_are_copies():
    # Only a key's first emit is kept; changing the object afterwards changes neither that key nor the next.
    mapper = "function () { var k = {u: 1}; emit(k, 1); k.u = 2; emit(k, 1); emit(k, 1); k.u = 3; k.x = [1]; }"
    result = as_mapping(map_reduce([{}, {}], mapper, SUM))
    assert result == {shape({"u": 1}): 2, shape({"u": 2}): 4}


def test_mapper_sees_the_whole_hit():
    # A mapper that uses `this` as a whole (not just this.name) gets every field.
    hits = make_hits(20)
    result = dict(map_reduce(hits, "function () { emit(Object.keys(this).join(','), 1); }", SUM))
    assert result == dict(Counter(",".join(hit) for hit in hits))
    result = dict(map_reduce(hits, "function () { emit(this.hasOwnProperty('title'), 1); }", SUM))
    assert result == dict(Counter("title" in hit for hit in hits))


def test_a_field_named_proto_stays_a_field():
    when = datetime(2026, 1, 1, tzinfo=UTC)
    hits = [{"__proto__": ["a", "b"], "url": "/"}, {"__proto__": when, "url": "/"}]
    mapper = """function () {
        emit(Object.getPrototypeOf(this) === Object.prototype, 1);
        emit(this.url + (this["__proto__"] instanceof Date), this);
    }"""
    result = dict(map_reduce(hits, mapper, "function (k, v) { return v.length; }"))
    assert result == {True: 2, "/false": hits[0], "/true": hits[1]}


def test_mongodb_shell_helpers():
    mapper = """function () {
        emit("sum", Array.sum([1, 2, 3.5])); emit("sumEmpty", Array.sum([]));
        emit("avg", Array.avg([1, 2, 3, 4])); emit("contains", [Array.contains([1, "a"], "a"), Array.contains([1], 2)]);
        emit("unique", Array.unique([3, 1, 3, "a", "a", 1]));
        emit("is", [isNumber(1), isNumber("1"), isString("s"), isString(1), isObject({}), isObject([]), isObject(1)]);
        emit("tojson", [tojson({a: 1, b: "x", c: [1, 2]}), tojson(new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6))),
                        tojson({long: "a string that makes this object longer than eighty characters, collapsed"}),
                        tojsononeline({d: new Date(0)}), tojson("s"), tojson(null), tojson([])]);
    }"""
    result = dict(map_reduce([{}], mapper, SUM))
    assert result == {
        "sum": 6.5, "sumEmpty": None, "avg": 2.5, "contains": [True, False], "unique": [3, 1, "a"],
        "is": [True, False, True, False, True, True, False],
        "tojson": ['{ "a" : 1, "b" : "x", "c" : [ 1, 2 ] }', 'ISODate("2026-01-02T03:04:05.006Z")',
                   '{\n\t"long" : "a string that makes this object longer than eighty characters, collapsed"\n}',
                   '{  "d" : ISODate("1970-01-01T00:00:00Z") }', '"s"', "null", "[ ]"],
    }


DAY_MAPPER = "function () { emit(this.time.toISOString().slice(0, 10), {n: 1}); }"
DAY_REDUCER = "function (k, vs) { var n = 0; vs.forEach(function (v) { n += v.n; }); return {n: n}; }"


def check_worker_counts(hits, counts):
    expected = default_report(hits)
    days = Counter(hit["time"].date().isoformat() for hit in hits)
    for workers in counts:
        assert as_mapping(map_reduce(hits, MAPPER, REDUCER, workers=workers)) == expected
        result = map_reduce(iter(hits), DAY_MAPPER, DAY_REDUCER, workers=workers)
        assert {k: v["n"] for k, v in result} == dict(days)


def test_two_workers_give_the_same_results():
    check_worker_counts(make_hits(12_000, urls=300, every_title=5), [1, 2])


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers():
    check_worker_counts(make_hits(120_000, urls=300, every_title=5), [1, 2, None])  # None splits after 50,000


def test_hits_with_values_javascript_cannot_take():
    with pytest.raises(MapReduceError, match="bytes"):
        map_reduce([{"x": b"raw"}], "function () { emit(this.x, 1); }", SUM)


# --- compile errors ------------------------------------------------------------------------------


def test_valid_sources_compile():
    check_compiles(MAPPER, REDUCER)
    check_compiles(MAPPER, "(k, vs) => Array.sum(vs)", "  // keep\n function (k, v) { return v; }")
    check_compiles("/* c */ (function () { emit(1, 1); })", "async function (k, v) { return 1; }", "   ")


@pytest.mark.parametrize("option", ["mapper", "reducer", "finalize"])
@pytest.mark.parametrize(("source", "message"), [
    ("function () { emit(1, }", "does not compile: SyntaxError"),
    ("function () {\n  var x = ;\n}", r"does not compile: SyntaxError.*\(line 2, column \d+\)"),
    ("function () {}, function () {}", "does not compile"),
    # would run code if it were wrapped naively; it neither compiles nor runs
    ("function () {}); while (true) {} (function () {", "does not compile"),
    ("function () {} : 0), (0 ? function () {}", "does not compile"),
    ("function () {}, while (true) {}", "does not compile"),
    ("function () { import * as os from 'os'; }", "does not compile"),
    ("", "is empty"),
])
def test_compile_errors_name_the_option(option, source, message):
    sources = {"mapper": MAPPER, "reducer": REDUCER, "finalize": None, option: source}
    if option == "finalize" and not source:
        check_compiles(**sources)  # a blank finalize is no finalize
        return
    started = time.monotonic()
    with pytest.raises(CompileError, match=f"^{option} {message}") as info:
        check_compiles(**sources)
    assert info.value.option == option
    with pytest.raises(CompileError) as info:
        map_reduce([{"url": "/"}], **sources)
    assert info.value.option == option
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("source", "what"), [("(1)", "a number"), ("(function () {})()", "undefined"),
                                            ("function () { return {}; }()", "an object")])
def test_an_expression_that_is_not_a_function_fails_the_run(source, what):
    check_compiles(MAPPER, source)  # only running it can tell
    with pytest.raises(CompileError, match=f"^reducer is not a function: it evaluates to {what}$") as info:
        map_reduce([{"url": "/"}], MAPPER, source)
    assert info.value.option == "reducer"


# --- run-time errors and limits ------------------------------------------------------------------


@pytest.mark.parametrize(("mapper", "reducer", "finalize", "message"), [
    ("function () { emit(this.x.y, 1); }", SUM, None,
     r"^mapper failed: TypeError: cannot read property 'y' of undefined$"),
    ("function () { emit(1, 1); }", "function () { throw new RangeError('bad'); }", None,
     "^reducer failed: RangeError: bad$"),
    ("function () { emit(1, 1); }", SUM, "function () { throw 'plain'; }",
     "^finalize failed: uncaught exception: plain$"),
    ("function () { emit(1n, 1); }", SUM, None, "^mapper failed: TypeError: emit: a key cannot be a bigint$"),
    ("function () { emit(1, 1); }", "function (k) { emit(k, 2); return 3; }", None,
     r"^reducer failed: Error: emit\(\) can only be called by the mapper$"),
])
def test_javascript_errors_name_the_function(mapper, reducer, finalize, message):
    with pytest.raises(MapReduceError, match=message):
        map_reduce([{}, {}], mapper, reducer, finalize)


def test_runaway_mapper_hits_the_cpu_limit():
    started = time.monotonic()
    with pytest.raises(MapReduceError, match=r"^mapper exceeded the CPU time limit of 2 s"):
        map_reduce(make_hits(10), "function () { while (true) {} }", SUM, limits=Limits(cpu_seconds=2))
    assert time.monotonic() - started < 15  # CPU time, so allow for a busy machine


def test_the_cpu_limit_is_for_the_whole_run():
    # About 1 ms per hit in three batches of 1000: each call is short, together they are too long.
    started = time.monotonic()
    with pytest.raises(MapReduceError, match=r"^mapper exceeded the CPU time limit of 1.5 s"):
        map_reduce(make_hits(3000), "function () { var t = Date.now(); while (Date.now() - t < 1) {} }", SUM,
                   limits=Limits(cpu_seconds=1.5))
    assert time.monotonic() - started < 15  # CPU time, so allow for a busy machine


def test_limits_are_checked():
    with pytest.raises(ValueError, match="cpu_seconds"):
        Limits(cpu_seconds=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=1)
    with pytest.raises(ValueError, match="workers"):
        map_reduce([], MAPPER, REDUCER, workers=0)


def test_runaway_reducer_hits_the_cpu_limit_across_workers():
    started = time.monotonic()
    with pytest.raises(MapReduceError, match=r"^reducer exceeded the CPU time limit of 1 s"):
        map_reduce(make_hits(10), "function () { emit(1, 1); }", "function () { while (true) {} }",
                   limits=Limits(cpu_seconds=1), workers=2)
    assert time.monotonic() - started < 15  # CPU time, so allow for a busy machine


OUT_OF_MEMORY = r"^mapper exceeded the memory limit of 32 MB \(JavaScript memory per worker\)$"


@pytest.mark.parametrize(("mapper", "message"), [
    # Large allocations: QuickJS throws InternalError("out of memory") (or null, see below).
    ("function () { var a = []; while (true) a.push(new Array(1e6)); }", OUT_OF_MEMORY),
    # Many small allocations fill the limit so exactly that QuickJS cannot allocate the error
    # either and throws null instead.
    ("function () { var a = []; while (true) a.push({x: 1}); }", OUT_OF_MEMORY),
    ('function () { var o = {}; for (var i = 0; ; i++) o["k" + i] = i; }', OUT_OF_MEMORY),
    # The emitted keys pile up in the worker's engine, so the mapper is the one that runs out.
    ('function () { for (var i = 0; ; i++) emit("k" + i, i); }', OUT_OF_MEMORY),
    # Concatenation makes ropes, so doubling a string hits the length limit rather than memory.
    ('function () { var s = "x"; while (true) s += s; }', r"^mapper failed: InternalError: string too long$"),
    # A null the user's code throws is not mistaken for the engine running out of memory.
    ("function () { throw null; }",
     r"^mapper failed: uncaught exception: null \(or it exceeded the memory limit of 32 MB\)$"),
    ("function () { var a = []; for (var i = 0; i < 10; i++) a.push({x: i}); if (this.pageviews >= 0) throw null; }",
     r"^mapper failed: uncaught exception: null"),
    ("function () { emit(1, 1); function* g() { yield 1; } var it = g(); it.next(); it.throw(null); }",
     r"^mapper failed: uncaught exception: null"),
    ('function () { eval("throw null"); }', r"^mapper failed: uncaught exception: null"),
], ids=["big-arrays", "small-objects", "many-keys", "many-emits", "doubling-string", "throw-null",
        "throw-null-after-allocating", "generator-throw-null", "eval-throw-null"])
def test_runaway_memory_hits_the_memory_limit(mapper, message):
    started = time.monotonic()
    with pytest.raises(MapReduceError, match=message):
        map_reduce(make_hits(10), mapper, SUM, limits=Limits(cpu_seconds=5, memory_mb=32))
    assert time.monotonic() - started < 15  # CPU time, so allow for a busy machine


def test_a_reducer_running_out_of_memory_is_named():
    with pytest.raises(MapReduceError, match=r"^reducer exceeded the memory limit of 32 MB"):
        map_reduce(make_hits(10), "function () { emit(1, 1); }",
                   "function (k, v) { var a = []; while (true) a.push({x: 1}); }",
                   limits=Limits(cpu_seconds=5, memory_mb=32))


BUSY_MAPPER = "function () { var t = Date.now(); while (Date.now() - t < 30000) {} }"


def assert_a_killed_worker_fails_the_run_promptly(run_map_reduce):
    outcome = {}

    def run():
        try:
            run_map_reduce()
        except MapReduceError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (worker,) = multiprocessing.active_children()
    started = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert "killed by signal 9" in str(outcome["error"])


def test_a_killed_worker_fails_the_run_promptly():
    assert_a_killed_worker_fails_the_run_promptly(
        lambda: map_reduce(make_hits(10), BUSY_MAPPER, SUM, limits=Limits(cpu_seconds=60)))


# --- sandbox -------------------------------------------------------------------------------------


STANDARD_GLOBALS = {
    "AggregateError", "Array", "ArrayBuffer", "AsyncDisposableStack", "Atomics", "BigInt", "BigInt64Array",
    "BigUint64Array", "Boolean", "DOMException", "DataView", "Date", "DisposableStack", "Error", "EvalError",
    "FinalizationRegistry", "Float16Array", "Float32Array", "Float64Array", "Function", "Infinity", "Int16Array",
    "Int32Array", "Int8Array", "InternalError", "Iterator", "JSON", "Map", "Math", "NaN", "Number", "Object",
    "Promise", "Proxy", "RangeError", "ReferenceError", "Reflect", "RegExp", "Set", "SharedArrayBuffer", "String",
    "SuppressedError", "Symbol", "SyntaxError", "TypeError", "URIError", "Uint16Array", "Uint32Array", "Uint8Array",
    "Uint8ClampedArray", "WeakMap", "WeakRef", "WeakSet", "atob", "btoa", "decodeURI", "decodeURIComponent",
    "encodeURI", "encodeURIComponent", "escape", "eval", "globalThis", "isFinite", "isNaN", "parseFloat", "parseInt",
    "performance", "queueMicrotask", "undefined", "unescape",
}
OUR_GLOBALS = {"emit", "isNumber", "isObject", "isString", "tojson", "tojsononeline"}


def test_javascript_reaches_nothing_outside():
    mapper = """function () {
        emit("typeof", [typeof require, typeof std, typeof os, typeof process, typeof print, typeof console,
                        typeof scriptArgs, typeof module, typeof exports, typeof Deno, typeof fetch,
                        typeof XMLHttpRequest, typeof setTimeout]);
        emit("globals", Object.getOwnPropertyNames(globalThis).filter(function (n) {
            return n.indexOf("__mongol_") !== 0;
        }));
        emit("import", Object.prototype.toString.call(import("os")));
        var blocked;
        try { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); } catch (e) { blocked = String(e); }
        emit("wait", blocked);
    }"""
    result = dict(map_reduce([{}], mapper, SUM))
    assert result["typeof"] == ["undefined"] * 13
    assert set(result["globals"]) == STANDARD_GLOBALS | OUR_GLOBALS  # no Python callables, no std/os
    assert result["import"] == "[object Promise]"  # rejected below; its jobs never even run in a worker
    assert result["wait"] == "TypeError: cannot block in this thread"


def test_dynamic_import_loads_no_module():
    # In the worker's engine, with its pending jobs run so that each import settles.
    engine = Engine(["function () {}", SUM, None], Limits(cpu_seconds=5, memory_mb=32))
    path = os.path.abspath(__file__)
    engine.ctx.eval("globalThis.settled = {}")
    for name in ["os", "std", "qjs:os", "qjs:std", "qjs:bjson", path, "file://" + path, "./test_mapreduce.py"]:
        engine.ctx.eval(f"import({name!r}).then(function (m) {{ settled[{name!r}] = 'loaded'; }},"
                        f" function (e) {{ settled[{name!r}] = String(e); }})")
    while engine.ctx.execute_pending_job():
        pass
    settled = engine.ctx.eval("JSON.stringify(settled)")
    assert "loaded" not in settled
    assert settled.count("ReferenceError: could not load module") == 8


# --- hits the workers read themselves (HitSource) -------------------------------------------------


class ListSource:
    """A HitSource over hits held in memory (pickled to each worker), as a store's reader would give them:
    the docs without _id and time, which come last, time in milliseconds."""

    def __init__(self, hits, part=250, batch=40, fail_at=None):
        self.rows = []
        for hit in hits:
            doc = {k: v for k, v in hit.items() if k not in ("_id", "time")}
            ms = (hit["time"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
            self.rows.append((orjson.dumps(doc, option=orjson.OPT_PASSTHROUGH_DATETIME,
                                           default=lambda d: {"\x00date": int(d.timestamp() * 1000)}).decode(),
                              hit["_id"], ms))
        self.part, self.batch, self.fail_at = part, batch, fail_at

    def count(self):
        return len(self.rows)

    def parts(self):
        for start in range(0, len(self.rows), self.part):
            yield min(self.part, len(self.rows) - start), [start, min(start + self.part, len(self.rows))]

    def read(self, part):
        for start in range(part[0], part[1], self.batch):
            if self.fail_at is not None and start >= self.fail_at:
                raise StoreError("the disk is on fire")
            rows = self.rows[start:min(start + self.batch, part[1])]
            docs = ",".join(doc for doc, _, _ in rows)
            ids, times = orjson.dumps([i for _, i, _ in rows]).decode(), orjson.dumps([t for *_, t in rows]).decode()
            text = f"[[{docs}],{ids},{times}]"
            yield len(rows), text, "\\u0000" in docs


def last_id_and_time(hit):
    """The hit with its fields in the order a store's reader gives them: _id and time last."""
    return {**{k: v for k, v in hit.items() if k not in ("_id", "time")}, "_id": hit["_id"], "time": hit["time"]}


@pytest.mark.parametrize("workers", [1, 2, None])
def test_workers_reading_a_source_give_what_map_reduce_gives(workers):
    hits = make_hits(3000, urls=300, every_title=5)
    source = ListSource(hits)
    assert as_mapping(map_reduce_source(source, MAPPER, REDUCER, workers=workers)) == default_report(hits)
    days = Counter(hit["time"].date().isoformat() for hit in hits)
    result = map_reduce_source(source, DAY_MAPPER, DAY_REDUCER, workers=workers)
    assert {k: v["n"] for k, v in result} == dict(days)
    whole = "function () { emit(Object.keys(this).join(), {n: 1, id: this._id.length, t: this.time}); }"
    reducer = "function (k, vs) { var n = 0; vs.forEach(function (v) { n += v.n; }); return {n: n}; }"
    finalize = "function (k, v) { return v.n === undefined ? 'single' : v.n; }"
    ordered = [last_id_and_time(hit) for hit in hits]
    assert sorted(map_reduce_source(source, whole, reducer, finalize, workers=workers)) == sorted(
        map_reduce(ordered, whole, reducer, finalize, workers=workers))


def test_a_source_with_tagged_values():
    when = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    hits = [{**hit, "nested": {"when": when}} for hit in make_hits(50)]
    mapper = "function () { emit(this.nested.when instanceof Date, this.nested.when); }"
    reducer = "function (k, vs) { return vs[0]; }"
    assert map_reduce_source(ListSource(hits), mapper, reducer) == [(True, when)]


def test_a_source_of_no_hits():
    assert map_reduce_source(ListSource([]), MAPPER, REDUCER) == []
    assert map_reduce_source(ListSource([]), MAPPER, REDUCER, workers=2) == []
    with pytest.raises(CompileError, match=r"^reducer is not a function"):
        map_reduce_source(ListSource([]), MAPPER, "(1)")


def test_progress_of_a_source():
    hits = make_hits(1000)
    seen = []

    def progress(ticks, total):
        seen.append(total)
        for count, text in ticks:
            assert text == b"" and count > 0
            seen.append(count)
            yield count, text

    for workers in (1, 2):
        seen.clear()
        assert as_mapping(map_reduce_source(ListSource(hits), MAPPER, REDUCER, workers=workers,
                                            progress=progress)) == default_report(hits)
        assert seen[0] == 1000 and sum(seen[1:]) == 1000 and len(seen) > 2


def test_a_source_that_cannot_be_read_fails_the_run():
    with pytest.raises(MapReduceError, match=r"^the disk is on fire$"):
        map_reduce_source(ListSource(make_hits(1000), fail_at=600), MAPPER, REDUCER, workers=2)


def test_the_cpu_limit_is_for_the_whole_run_of_a_source():
    # About 1 ms per hit, over two workers that read their parts and share the one budget.
    started = time.monotonic()
    with pytest.raises(MapReduceError, match=r"^mapper exceeded the CPU time limit of 1.5 s"):
        map_reduce_source(ListSource(make_hits(6000), part=1000, batch=100),
                          "function () { var t = Date.now(); while (Date.now() - t < 1) {} }", SUM,
                          limits=Limits(cpu_seconds=1.5), workers=2)
    assert time.monotonic() - started < 15  # CPU time, so allow for a busy machine


def test_a_killed_worker_fails_a_source_run_promptly():
    assert_a_killed_worker_fails_the_run_promptly(
        lambda: map_reduce_source(ListSource(make_hits(10)), BUSY_MAPPER, SUM, limits=Limits(cpu_seconds=60)))
