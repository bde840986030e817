// The JavaScript side of mongol.mapreduce, installed once per QuickJS context before any user code
// (mongol/mapreduce/engine.py reads this file). Only the names set on `globalThis` are global; the rest
// stays inside the closures (user code could still overwrite the globals, which can only spoil its own
// results). Checked with Node by tests/test_mapreduce_driver.py.
(function () {
"use strict";
const g = globalThis;
const DATE = "\u0000date", NUM = "\u0000num", UNDEFINED = {"\u0000undefined": 0};
const PILE = 1000;            // re-reduce a key once this many values are pending
const fns = [null, null, null];
let mapper = null, reducer = null, finalizer = null;
let table = new Map();        // canonical key -> {key, values}
let parts = null;             // partitions computed by partial()
let mapping = false;          // emit() is for the mapper only
const dateProto = Date.prototype;
const origToJSON = dateProto.toJSON;
function define(o, name, f) {
  Object.defineProperty(o, name, {value: f, writable: true, configurable: true, enumerable: false});
}

g.__mongol_phase = 3;

// BSON keeps undefined as a type of its own: [undefined] is not [null], {a: undefined} is not {}.
function keyField(k, v) { return v === undefined ? UNDEFINED : v; }

// The canonical string of an object key. A Date must not equal the string of its ISO form: let
// JSON.stringify tag dates natively, through a toJSON that tags only while a key is being written
// (cheaper than swapping Date.prototype.toJSON for every key, which also invalidates the engine's
// caches of that prototype).
let inKey = false;
define(dateProto, "toJSON", function toJSON(key) {
  return inKey ? {[DATE]: this.getTime()} : origToJSON.call(this, key);
});
function keyJSON(k) {
  inKey = true;
  try { return JSON.stringify(k, keyField); } finally { inKey = false; }
}

// An own "__proto__" field (JSON.parse makes them) must stay a field: plain assignment would call the
// setter that replaces the prototype.
function put(o, k, v) {
  if (k === "__proto__") Object.defineProperty(o, k, {value: v, writable: true, enumerable: true, configurable: true});
  else o[k] = v;
}

// Objects whose names keep the order of the stored hit. JavaScript enumerates integer-like names
// ("1") first, BSON (and so MongoDB's engine, which reads the hit's BSON) in the stored order: where
// the two differ, the object is a Proxy that lists its names in the stored order. Made only by
// parseOrdered (hits and partial results whose text has such names) and clone.
const orderedObjects = new WeakSet();
let anyOrdered = false;
function makeOrdered(target, names) {
  const o = new Proxy(target, {
    ownKeys(t) {
      const own = Reflect.ownKeys(t), have = new Set(own), out = [];
      for (let i = 0; i < names.length; i++) if (have.has(names[i])) out.push(names[i]);
      const listed = new Set(out);
      for (let i = 0; i < own.length; i++) if (!listed.has(own[i])) out.push(own[i]);
      return out;
    },
  });
  orderedObjects.add(o);
  anyOrdered = true;
  return o;
}

function ordered(o, names) {
  const ks = Object.keys(o);
  for (let i = 0; i < ks.length; i++) if (ks[i] !== names[i]) return makeOrdered(o, names);
  return o;
}

// JSON.parse that keeps the order of names (see makeOrdered). Slow: used only on a text that has an
// integer-like name (the Python side looks).
const TOKEN = /\s*(?:("(?:[^"\\]|\\.)*")|(-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)|(true|false|null)|([{}[\]:,]))/y;
function parseOrdered(text) {
  let pos = 0;
  function next() {
    TOKEN.lastIndex = pos;
    const m = TOKEN.exec(text);
    if (m === null) throw new SyntaxError("JSON: unexpected text at " + pos);
    pos = TOKEN.lastIndex;
    return m;
  }
  function expect(m, p) { if (m[4] !== p) throw new SyntaxError("JSON: expected " + p + " at " + pos); }
  function value(m) {
    if (m[1] !== undefined) return JSON.parse(m[1]);
    if (m[2] !== undefined) return Number(m[2]);
    if (m[3] !== undefined) return m[3] === "null" ? null : m[3] === "true";
    if (m[4] === "[") {
      const a = [];
      let t = next();
      if (t[4] === "]") return a;
      for (;;) {
        a.push(value(t));
        t = next();
        if (t[4] === "]") return a;
        expect(t, ",");
        t = next();
      }
    }
    if (m[4] === "{") {
      const o = {}, names = [];
      let t = next();
      if (t[4] === "}") return o;
      for (;;) {
        if (t[1] === undefined) throw new SyntaxError("JSON: expected a name at " + pos);
        const k = JSON.parse(t[1]);
        expect(next(), ":");
        const v = value(next());
        if (!Object.prototype.hasOwnProperty.call(o, k)) names.push(k);
        put(o, k, v);
        t = next();
        if (t[4] === "}") return ordered(o, names);
        expect(t, ",");
        t = next();
      }
    }
    throw new SyntaxError("JSON: unexpected " + m[4] + " at " + pos);
  }
  return value(next());
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
  return anyOrdered && orderedObjects.has(v) ? makeOrdered(o, ks) : o;
}

// What a reducer or finalize is given as its key: a copy, as MongoDB gives, so that changing it
// changes neither the key of the results nor what later calls see.
function keyArgument(k) { return (typeof k === "object" && k !== null) ? clone(k) : k; }

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
  const r = reducer(keyArgument(key), values);
  g.__mongol_phase = phase;
  mapping = m;
  return r;
}

function emit(k, v) {
  if (!mapping) throw new Error("emit() can only be called by the mapper");
  if (arguments.length !== 2) throw new Error("emit takes 2 args");  // MongoDB's words
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

// Hits encoded by the parent: a JSON array of docs. `ordered`: the text has integer-like names.
g.__mongol_map = function (text, ordered) {
  g.__mongol_phase = 4;
  const docs = ordered ? parseOrdered(text) : JSON.parse(text);
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
g.__mongol_map_hits = function (text, tagged, ordered) {
  g.__mongol_phase = 4;
  const batch = ordered ? parseOrdered(text) : JSON.parse(text), docs = batch[0], ids = batch[1], times = batch[2];
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
    if (finalizer !== null) { g.__mongol_phase = 2; v = finalizer(keyArgument(e.key), v); }
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
g.__mongol_absorb = function (text, ordered) {
  g.__mongol_phase = 5;
  const entries = ordered ? parseOrdered(text) : JSON.parse(text);
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

// tojson and its helpers as MongoDB's server-side types.js has them (7.0 and later): this, not the
// shell's printing, is what a reducer calls on a server.
function zeroPad(n, w) { return String(n).padStart(w, "0"); }
define(Date.prototype, "tojson", function () {
  // An invalid Date prints its NaN fields, as types.js's zeroPad does: ISODate("0NaN-NaN-NaNTNaN:NaN:NaNZ").
  let ss = zeroPad(this.getUTCSeconds(), 2);
  if (this.getUTCMilliseconds()) ss += "." + zeroPad(this.getUTCMilliseconds(), 3);
  return "ISODate(\"" + zeroPad(this.getUTCFullYear(), 4) + "-" + zeroPad(this.getUTCMonth() + 1, 2) + "-" +
    zeroPad(this.getUTCDate(), 2) + "T" + zeroPad(this.getUTCHours(), 2) + ":" + zeroPad(this.getUTCMinutes(), 2) +
    ":" + ss + "Z\")";
});
define(RegExp.prototype, "tojson", RegExp.prototype.toString);
define(Array, "tojson", function (a, indent, nolint, depth) {
  checkArray(a, "tojson");
  depth = depth || 0;
  if (depth > tojson.MAX_DEPTH) return "[Array]";
  if (a.length === 0) return "[ ]";
  indent = nolint ? "" : (indent || "") + "\t";
  const sep = nolint ? " " : "\n";
  let s = "[" + sep;
  for (let i = 0; i < a.length; i++) {
    s += indent + tojson(a[i], indent, nolint, depth + 1);
    if (i < a.length - 1) s += "," + sep;
  }
  if (!nolint) indent = indent.substring(1);
  return s + sep + indent + "]";
});
define(Set, "tojson", function (s, indent, nolint, depth) {
  return "new Set(" + Array.tojson(Array.from(s), indent, nolint, depth) + ")";
});
define(Map, "tojson", function (m, indent, nolint, depth) {
  return "new Map(" + Array.tojson(Array.from(m.entries()), indent, nolint, depth) + ")";
});
function tojsonObject(x, indent, nolint, depth) {
  const lineEnding = nolint ? " " : "\n", tabSpace = nolint ? "" : "\t";
  if (typeof x.tojson === "function" && x.tojson !== tojson) return x.tojson(indent, nolint, depth);
  if (x.constructor && typeof x.constructor.tojson === "function" && x.constructor.tojson !== tojson) {
    return x.constructor.tojson(x, indent, nolint, depth);
  }
  if (x instanceof Error) return "new " + x.name + "(" + JSON.stringify(x.message) + ")";
  try { x.toString(); } catch (e) { return "[Object]"; }  // no callable toString (Object.create(null))
  if (depth > tojson.MAX_DEPTH) return "[Object]";
  indent += tabSpace;
  const fields = [];
  for (const k in x) fields.push(indent + "\"" + k + "\" : " + tojson(x[k], indent, nolint, depth + 1));
  const s = "{" + lineEnding + (fields.length ? fields.join("," + lineEnding) : indent) + lineEnding;
  return s + indent.substring(1) + "}";
}
function tojson(x, indent, nolint, depth) {
  if (x === null) return "null";
  if (x === undefined) return "undefined";
  indent = indent || "";
  depth = typeof depth === "number" ? depth : 0;
  switch (typeof x) {
    case "string": return JSON.stringify(x);
    case "number": case "boolean": return "" + x;
    case "object": {
      let s = tojsonObject(x, indent, nolint, depth);
      if ((nolint == null || nolint === true) && s.length < 80 && indent.length === 0) {
        s = s.replace(/[\t\r\n]+/gm, " ");
      }
      return s;
    }
    case "function": return x.toString();
    default: throw new Error("tojson can't handle type " + typeof x);
  }
}
tojson.MAX_DEPTH = 100;
g.tojson = tojson;
g.tojsononeline = function (x) { return tojson(x, " ", true); };
})();
