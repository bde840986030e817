// The JavaScript side of mongol.mapreduce, installed once per QuickJS context before any user code
// (mongol/mapreduce/engine.py reads this file). Only the names set on `globalThis` are global; the rest
// stays inside the closures (user code could still overwrite the globals, which can only spoil its own
// results). Checked with Node by tests/test_mapreduce_driver.py.
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
