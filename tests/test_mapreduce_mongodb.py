"""Where Mongol's engine once parted from MongoDB's map/reduce: each test says what MongoDB does, and
which MongoDB it follows where versions differ (README, "mapper, reducer, finalize")."""

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from mongol.hit import new_id
from mongol.mapreduce import CompileError, Limits, MapReduceError, check_compiles, map_reduce, map_reduce_source
from mongol.stores import open_store
from tests.test_mapreduce import SUM, as_mapping, shape

URLS = [{"url": "/a"}, {"url": "/a"}, {"url": "/b"}]
MAPPER = "function () { emit(this.url, 1); }"


# --- 1. emit takes two arguments -----------------------------------------------------------------


@pytest.mark.parametrize("call", ["emit(this.url)", "emit(this.url, 1, 2)", "emit()"])
def test_emit_takes_exactly_two_arguments(call):
    # MongoDB fails the run when emit is called with other than two arguments: "emit takes 2 args"
    # (4.4 and later, code 31220; "fast_emit takes 2 args" in the older engine).
    with pytest.raises(MapReduceError, match=r"^mapper failed: Error: emit takes 2 args$"):
        map_reduce(URLS, f"function () {{ {call}; }}", SUM)


def test_an_undefined_value_is_still_two_arguments():
    result = dict(map_reduce(URLS[:1], "function () { emit(this.url, undefined); }", SUM))
    assert result == {"/a": None}


# --- 2. reduce and finalize get a copy of the key ------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_reducer_and_finalize_change_only_their_copy_of_the_key(workers):
    # MongoDB hands reduce and finalize a new object made from the key's BSON: what they do to it
    # changes neither the results' key nor what the next call is given.
    hits = [{"url": "/a"}] * 2500 + [{"url": "/b"}] * 3  # /a is re-reduced, and merged across workers
    mapper = "function () { emit({u: this.url, tags: [1]}, 1); }"
    reducer = """function (k, vs) {
        if (k.u !== '/a' && k.u !== '/b' || k.tags.length !== 1) throw new Error('key changed: ' + tojson(k));
        k.u = 'changed'; k.extra = 1; k.tags.push(2); return Array.sum(vs); }"""
    finalize = "function (k, v) { k.u = 'again'; delete k.tags; return v; }"
    result = as_mapping(map_reduce(hits, mapper, reducer, finalize, workers=workers))
    assert result == {shape({"u": "/a", "tags": [1]}): 2500, shape({"u": "/b", "tags": [1]}): 3}


# --- 3. a function body is a function ------------------------------------------------------------


@pytest.mark.parametrize(("mapper", "reducer", "finalize"), [
    ("emit(this.url, 1)", SUM, None),
    ("var u = this.url; emit(u, 1);", SUM, None),
    ("  // a body\n  emit(this.url, 1)\n", "return Array.sum(arguments[1]);", None),
    (MAPPER, "var vs = arguments[1]; Array.sum(vs)", None),
    (MAPPER, "var vs = arguments[1]\nArray.sum(vs)", None),  # no semicolon: the last line is the expression
    (MAPPER, "var vs = arguments[1]\nif (vs.length > 5) { throw 1 }\nArray.sum(vs)\n  + 0", "arguments[1] * 10 / 10"),
])
def test_a_function_body_is_a_function(mapper, reducer, finalize):
    # MongoDB makes a function of a source that is not one (functionExpressionParser, in every
    # version since 3.2): `function () { SOURCE }`, returning its last statement if that is an expression.
    check_compiles(mapper, reducer, finalize)
    assert dict(map_reduce(URLS, mapper, reducer, finalize)) == {"/a": 2, "/b": 1}


def test_a_report_section_may_give_function_bodies(tmp_path):
    from mongol.reportconfig import load

    config = tmp_path / "reports.cfg"
    config.write_text(f"[s]\noutput = {tmp_path}\nmapper = emit(this.url, 1)\n"
                      "reducer = return Array.sum(arguments[1])\n")
    [spec] = load(config, mongodb=False)
    assert dict(map_reduce(URLS, spec.mapper, spec.reducer)) == {"/a": 2, "/b": 1}


def test_a_body_ending_in_a_statement_returns_undefined():
    result = dict(map_reduce(URLS, MAPPER, SUM, "var v = arguments[1]; if (v > 1) { v = 0 }"))
    assert result == {"/a": None, "/b": None}


@pytest.mark.parametrize("source", ["emit(this.url, 1", "}); emit(1, 1); (function () {",
                                    "} : 0); emit(1, 1); (0 ? function () {", "return }"])
def test_a_body_that_does_not_compile_or_breaks_out_is_refused(source):
    with pytest.raises(CompileError, match=r"^mapper does not compile: SyntaxError"):
        check_compiles(source, SUM)


# --- 4. key equality is BSON's -------------------------------------------------------------------


def test_undefined_in_a_key_is_not_null_nor_absent():
    # BSON has undefined as a type of its own: MongoDB groups [undefined] apart from [null], and
    # {a: undefined} apart from {} and from {a: null}. Python shows undefined as None in an array
    # and leaves it out of an object (as JSON does, and as pymongo shows BSON undefined as None).
    mapper = """function () {
        emit([undefined], 1); emit([null], 1); emit({a: undefined}, 1); emit({}, 1); emit({a: null}, 1);
        emit([1, undefined], 1); emit([1], 1); }"""
    result = map_reduce([{}, {}], mapper, SUM)
    assert len(result) == 7 and all(value == 2 for _, value in result)
    assert Counter(repr(shape(key)) for key, _ in result) == Counter(repr(shape(k)) for k in [
        [None], [None], {}, {}, {"a": None}, [1, None], [1]])


@pytest.mark.parametrize("workers", [1, 2])
def test_objects_keep_their_stored_field_order(workers):
    # MongoDB reads a document's BSON in stored order, where JavaScript puts integer-like names first:
    # {"b": 1, "1": 2} and {"1": 2, "b": 1} are two keys, each with its own order.
    hits = [{"o": {"b": 1, "1": 2}}, {"o": {"1": 2, "b": 1}}, {"o": {"b": 1, "1": 2, "c": {"z": 0, "7": 1}}}] * 700
    result = as_mapping(map_reduce(hits, "function () { emit(this.o, 1); }", SUM, workers=workers))
    assert result == {shape({"b": 1, "1": 2}): 700, shape({"1": 2, "b": 1}): 700,
                      shape({"b": 1, "1": 2, "c": {"z": 0, "7": 1}}): 700}


def test_the_whole_hit_keeps_its_field_order(tmp_path):
    now = datetime.now(UTC)
    hits = []
    for i, names in enumerate([("b", "1"), ("1", "b"), ("b", "1"), ("x", "10", "2")]):
        when = now - timedelta(minutes=i + 1)
        # _id and time last: where the workers reading SQLite put them
        hits.append({"pageviews": 1, **{n: "v" for n in names}, "_id": new_id(when.timestamp()), "time": when})
    mapper = "function () { emit(Object.keys(this).join(','), 1); }"
    expected = {"pageviews,b,1,_id,time": 2, "pageviews,1,b,_id,time": 1, "pageviews,x,10,2,_id,time": 1}
    assert dict(map_reduce(hits, mapper, SUM)) == expected
    store = open_store(f"sqlite://{tmp_path}/hits.db")  # the workers read the stored text themselves
    try:
        store.insert_many(hits)
        assert dict(map_reduce_source(store.hit_source(None, None, None), mapper, SUM, workers=2)) == expected
    finally:
        store.close()


# --- 5. tojson is the server's ---------------------------------------------------------------------


def test_tojson_follows_the_servers_types_js():
    # What MongoDB's own types.js (7.0 and later, on the server that runs map/reduce) prints.
    mapper = r"""function () {
        emit("date", [tojson(new Date(NaN)), tojsononeline({d: new Date(0)}), tojson(new Date(-1))]);
        emit("error", [tojson(new TypeError("bad")), tojsononeline({e: new Error("x")})]);
        emit("names", [tojson({'a"b': 1}), tojsononeline({})]);
        emit("types", [tojson(new Set([1, 2])), tojson(new Map([["k", 1]])), tojson(/a+/g),
                       tojson({tojson: function () { return "mine"; }})]);
        var deep = {}; for (var i = 0; i < 120; i++) deep = {d: deep};
        emit("deep", tojsononeline(deep).indexOf("[Object]") > 0);
        try { tojson(1n); emit("bigint", "no error"); } catch (e) { emit("bigint", String(e)); }
    }"""
    result = dict(map_reduce([{}], mapper, SUM))
    assert result == {
        "date": ['ISODate("0NaN-NaN-NaNTNaN:NaN:NaNZ")', '{  "d" : ISODate("1970-01-01T00:00:00Z") }',
                 'ISODate("1969-12-31T23:59:59.999Z")'],
        "error": ['new TypeError("bad")', '{  "e" : new Error("x") }'],
        "names": ['{ "a"b" : 1 }', "{   }"],
        "types": ["new Set([ 1, 2 ])", 'new Map([ [ "k", 1 ] ])', "/a+/g", "mine"],
        "deep": True,
        "bigint": "Error: tojson can't handle type bigint",
    }


# --- 6. the parent decodes no more results than the memory limit ------------------------------


@pytest.mark.slow
def test_results_beyond_the_memory_limit_fail_the_run():
    # Each worker's results fit its own limit; the parent, which decodes them all, stops at one limit's
    # worth of results text in all rather than grow without bound. (MongoDB's inline results are
    # bounded too: 16 MB, the largest BSON document.)
    hits = [{"k": i} for i in range(90)]
    # One string for all values: a worker's memory holds little more than its results text.
    finalize = "function (k, v) { return globalThis.big || (globalThis.big = 'x'.repeat(500000)); }"
    with pytest.raises(MapReduceError, match=r"^the results exceed the memory limit of 40 MB"):
        map_reduce(hits, "function () { emit(this.k, 1); }", SUM, finalize, workers=3,
                   limits=Limits(memory_mb=40))
    result = map_reduce(hits[:70], "function () { emit(this.k, 1); }", SUM, finalize, workers=3,
                        limits=Limits(memory_mb=40))
    assert len(result) == 70 and {len(v) for _, v in result} == {500_000}


def test_json_stringify_in_user_code_still_writes_dates_as_iso():
    # The driver tags dates only while it writes a key's canonical string.
    mapper = "function () { var d = new Date(0); emit({d: d}, JSON.stringify({d: d})); emit('n', d.toJSON()); }"
    result = dict((repr(k), v) for k, v in map_reduce([{}], mapper, "function (k, vs) { return vs[0]; }"))
    assert result == {repr({"d": datetime(1970, 1, 1, tzinfo=UTC)}): '{"d":"1970-01-01T00:00:00.000Z"}',
                      repr("n"): "1970-01-01T00:00:00.000Z"}
