/* mongol-report dashboard: draws the JSONP reports of this folder, as listed in reports.js.
 *
 * Copied into the output folder by every run (edits here are overwritten). No third-party code and no
 * network beyond this folder: the manifest and every report are loaded with <script> tags, one after
 * the other, so the page works over HTTP and from file:// alike. Each report calls its own callback
 * (several may share `results`), so the callback is defined just before its script is inserted and
 * restored once it has run. Rows are drawn by shape:
 *   numbers keyed by ISO dates  -> a line chart over time (and the data in a table);
 *   numbers with other keys     -> horizontal bars and a table;
 *   anything else               -> a table.
 * Report data is user data (page titles are): it only ever reaches the page as text nodes and
 * attribute values, never as markup.
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var LOAD_TIMEOUT_MS = 30000;
  var MAX_BARS = 25;
  var STALE_SLACK_MS = 5000;
  var ISO_DATE = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$/;
  var HOUR = 3600000;
  var DAY = 24 * HOUR;
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  var numberFormat = new Intl.NumberFormat("en-US", {maximumFractionDigits: 2});
  var charts = [];  // {node, width, draw}: redrawn when the width of `node` changes

  // DOM helpers: text only, never markup ---------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function svgEl(tag, attrs, parent) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    if (parent) parent.appendChild(node);
    return node;
  }

  function setAttrs(node, attrs) {
    Object.keys(attrs || {}).forEach(function (name) {
      if (attrs[name] !== null && attrs[name] !== undefined) node.setAttribute(name, String(attrs[name]));
    });
  }

  function svgText(parent, x, y, text, attrs) {
    var node = svgEl("text", attrs, parent);
    node.setAttribute("x", x);
    node.setAttribute("y", y);
    node.textContent = text;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // Formatting -----------------------------------------------------------------------------------

  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function formatTime(ms, withSeconds) {
    var d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + (withSeconds ? ":" + pad(d.getUTCSeconds()) : "") +
      " UTC";
  }

  function formatAgo(ms) {
    var minutes = Math.round((Date.now() - ms) / 60000);
    if (minutes < 1) return "just now";
    if (minutes < 120) return minutes + (minutes === 1 ? " minute ago" : " minutes ago");
    var hours = Math.round(minutes / 60);
    if (hours < 48) return hours + " hours ago";
    return Math.round(hours / 24) + " days ago";
  }

  function formatNumber(value) {
    return numberFormat.format(value);
  }

  /** A key or value as text: strings as they are, other values as JSON. */
  function plainText(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") return value;
    if (typeof value === "number") return String(value);
    return JSON.stringify(value);
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function isNumber(value) {
    return typeof value === "number" && isFinite(value);
  }

  function isoTime(value) {
    if (typeof value !== "string" || !ISO_DATE.test(value)) return null;
    var ms = Date.parse(value);
    return isNaN(ms) ? null : ms;
  }

  /** A short label for a key: a page's url and title, else the text or JSON of the key. */
  function keyLabel(key) {
    if (isObject(key) && (typeof key.url === "string" || typeof key.title === "string")) {
      var url = typeof key.url === "string" ? key.url : "";
      var title = typeof key.title === "string" ? key.title : "";
      return url && title ? url + " · " + title : url || title;
    }
    return plainText(key);
  }

  // Loading --------------------------------------------------------------------------------------

  function resolve(path) {
    var obj = window;
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (obj === null || obj === undefined) return undefined;
      obj = obj[parts[i]];
    }
    return obj;
  }

  /** Define the (dotted) global `path` as `fn`; returns a function that puts back what was there. */
  function install(path, fn) {
    var parts = path.split(".");
    if (parts.indexOf("location") >= 0) throw new Error("the callback " + path + " would navigate away");
    var obj = window;
    var created = null;  // the first object made here: removing it removes everything made here
    for (var i = 0; i < parts.length - 1; i++) {
      var next = obj[parts[i]];
      if (next === undefined || next === null) {
        next = {};
        obj[parts[i]] = next;
        if (!created) created = {obj: obj, key: parts[i]};
      }
      obj = next;
    }
    var last = parts[parts.length - 1];
    var had = Object.prototype.hasOwnProperty.call(obj, last);
    var old = had ? obj[last] : undefined;
    function restore() {
      try {
        if (created) delete created.obj[created.key];
        else if (had) obj[last] = old;
        else delete obj[last];
      } catch (e) {
        // a read-only or non-configurable property: nothing was changed there
      }
    }
    try {
      obj[last] = fn;
    } catch (e) {
      restore();
      throw new Error("the callback " + path + " cannot be defined on this page");
    }
    if (resolve(path) !== fn) {
      restore();
      throw new Error("the callback " + path + " cannot be defined on this page");
    }
    return restore;
  }

  /** Run the script at `src`; `done(error)` once it has run, failed to load or timed out. */
  function loadScript(src, done) {
    var script = document.createElement("script");
    var finished = false;
    var timer = setTimeout(function () { finish(new Error("timed out")); }, LOAD_TIMEOUT_MS);
    function finish(error) {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      script.onload = script.onerror = null;
      if (script.parentNode) script.parentNode.removeChild(script);
      done(error);
    }
    script.onload = function () { finish(null); };
    script.onerror = function () { finish(new Error("could not be loaded")); };
    script.src = src;
    document.head.appendChild(script);
  }

  /** Load one report with its callback defined; `done(error, rows)`. */
  function loadReport(report, done) {
    var calls = [];
    var restore;
    try {
      restore = install(report.callback, function (rows) { calls.push(rows); });
    } catch (e) {
      done(e);
      return;
    }
    var version = report.written ? "?v=" + encodeURIComponent(report.written) : "";
    var path = report.file.split("/").map(encodeURIComponent).join("/");  // a standard report's months
    loadScript(path + version, function (error) {
      restore();
      if (error) done(new Error(report.file + " " + error.message));
      else if (calls.length !== 1) done(new Error(report.file + " did not call " + report.callback + "(…)"));
      else done(null, calls[0]);
    });
  }

  // Panels ---------------------------------------------------------------------------------------

  function makePanel(report) {
    var meta = el("p", {"class": "meta"});
    var body = el("div", {"class": "body"}, [el("p", {"class": "note"}, ["Loading…"])]);
    var panel = el("section", {"class": "report", "data-report": report.name, "data-state": "loading"}, [
      el("header", null, [el("h2", null, [report.name]), meta]),
      body,
    ]);
    return {report: report, node: panel, meta: meta, body: body};
  }

  function setMeta(panel, generatedMs, count) {
    var report = panel.report;
    var items = [];
    if (count !== null) {
      items.push(el("span", {"class": "count"}, [formatNumber(count) + (count === 1 ? " result" : " results")]));
    }
    if (report.window) items.push(el("span", null, ["last " + report.window]));
    if (report.site) items.push(el("span", null, ["site " + report.site]));
    var writtenMs = report.written ? Date.parse(report.written) : NaN;
    if (!isNaN(writtenMs)) {
      var stale = !isNaN(generatedMs) && writtenMs < generatedMs - STALE_SLACK_MS;
      items.push(el("span", {"class": stale ? "stale" : "written"}, [
        (stale ? "not updated by the last run; written " : "written ") + formatTime(writtenMs),
      ]));
      if (stale) panel.node.classList.add("is-stale");
    }
    clear(panel.meta);
    items.forEach(function (item, i) {
      if (i) panel.meta.appendChild(document.createTextNode(" · "));
      panel.meta.appendChild(item);
    });
  }

  function showNote(panel, state, text) {
    panel.node.setAttribute("data-state", state);
    clear(panel.body);
    panel.body.appendChild(el("p", {"class": state === "empty" ? "note" : "problem"}, [text]));
  }

  function drawReport(panel, rows) {
    if (!Array.isArray(rows) || !rows.every(function (row) { return isObject(row) && "_id" in row; })) {
      showNote(panel, "error", panel.report.file + " does not hold a list of {_id, value} results.");
      return;
    }
    if (!rows.length) {
      panel.node.setAttribute("data-shape", "empty");
      showNote(panel, "empty", "No results in this window.");
      return;
    }
    var numbers = rows.every(function (row) { return isNumber(row.value); });
    var times = numbers && rows.every(function (row) { return isoTime(row._id) !== null; });
    var shape = times ? "timeseries" : numbers ? "bars" : "table";
    panel.node.setAttribute("data-shape", shape);
    panel.node.setAttribute("data-state", "ok");
    panel.node.classList.add("shape-" + shape);
    clear(panel.body);
    if (shape === "timeseries") {
      var points = rows.map(function (row) { return {t: isoTime(row._id), iso: row._id, v: row.value}; });
      points.sort(function (a, b) { return a.t - b.t; });
      addChart(panel.body, "chart line-chart", function (node, width) { drawLineChart(node, width, points); });
      var details = el("details", {"class": "data"}, [el("summary", null, ["Data"])]);
      details.appendChild(table(["Time (UTC)"], points.map(function (p) {
        return {cells: [el("time", {datetime: p.iso}, [formatTime(p.t)])], value: p.v};
      }), ["Value"]));
      panel.body.appendChild(details);
    } else if (shape === "bars") {
      var shown = rows.slice(0, MAX_BARS);
      addChart(panel.body, "chart bar-chart", function (node, width) { drawBarChart(node, width, shown); });
      if (rows.length > shown.length) {
        panel.body.appendChild(el("p", {"class": "note"}, [
          "The chart shows the first " + shown.length + " of " + rows.length + "; the table has them all."]));
      }
      panel.body.appendChild(resultsTable(rows));
    } else {
      panel.body.appendChild(resultsTable(rows));
    }
  }

  // Tables ---------------------------------------------------------------------------------------

  /** Column names when every item is a plain object (their fields, in order of appearance), else null. */
  function fieldsOf(items) {
    if (!items.every(isObject)) return null;
    var fields = [];
    items.forEach(function (item) {
      Object.keys(item).forEach(function (k) { if (fields.indexOf(k) < 0) fields.push(k); });
    });
    return fields.length ? fields : null;
  }

  function cell(value, isKey) {
    if (isNumber(value) && !isKey) return el("td", {"class": "num"}, [formatNumber(value)]);
    return el("td", null, [plainText(value)]);
  }

  /** A table of results: rank, one column per key field (or "Key"), one per value field (or "Value"). */
  function resultsTable(rows) {
    var keys = rows.map(function (row) { return row._id; });
    var values = rows.map(function (row) { return row.value; });
    var keyFields = fieldsOf(keys);
    var valueFields = fieldsOf(values);
    return table(keyFields || ["Key"], rows.map(function (row) {
      var keyCells = keyFields ? keyFields.map(function (f) { return cell(row._id[f], true); })
        : [cell(row._id, true)];
      return {cells: keyCells, value: row.value, valueFields: valueFields};
    }), valueFields || ["Value"]);
  }

  function table(keyHeads, items, valueHeads) {
    var head = el("tr", null, [el("th", {"class": "num rank", scope: "col"}, ["#"])]);
    keyHeads.forEach(function (h) { head.appendChild(el("th", {scope: "col"}, [h])); });
    valueHeads.forEach(function (h) { head.appendChild(el("th", {"class": "num", scope: "col"}, [h])); });
    var tbody = el("tbody");
    items.forEach(function (item, i) {
      var tr = el("tr", null, [el("td", {"class": "num rank"}, [String(i + 1)])]);
      item.cells.forEach(function (c) { tr.appendChild(c.tagName === "TD" ? c : el("td", null, [c])); });
      if (item.valueFields) {
        item.valueFields.forEach(function (f) { tr.appendChild(cell(item.value[f], false)); });
      } else {
        tr.appendChild(cell(item.value, false));
      }
      tbody.appendChild(tr);
    });
    return el("div", {"class": "table-wrap"}, [el("table", null, [el("thead", null, [head]), tbody])]);
  }

  // Charts ---------------------------------------------------------------------------------------

  function addChart(parent, className, draw) {
    var node = el("div", {"class": className});
    parent.appendChild(node);
    var chart = {node: node, width: 0, draw: draw};
    charts.push(chart);
    redraw(chart);
  }

  function redraw(chart) {
    var width = Math.max(280, Math.floor(chart.node.clientWidth || 640));
    if (width === chart.width) return;
    chart.width = width;
    clear(chart.node);
    chart.draw(chart.node, width);
  }

  var resizePending = false;
  window.addEventListener("resize", function () {
    if (resizePending) return;
    resizePending = true;
    window.requestAnimationFrame(function () {
      resizePending = false;
      charts.forEach(redraw);
    });
  });

  /** About `count` round steps from lo to hi: {lo, hi, step}. */
  function niceScale(lo, hi, count, integers) {
    if (lo === hi) {
      if (lo === 0) hi = 1;
      else if (lo > 0) lo = 0;
      else hi = 0;
    }
    var raw = (hi - lo) / count;
    var mag = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * mag; }).filter(function (s) { return s >= raw; })[0];
    if (integers && step < 1) step = 1;
    return {lo: Math.floor(lo / step) * step, hi: Math.ceil(hi / step) * step, step: step};
  }

  var TIME_STEPS = [HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY];

  function timeTicks(t0, t1, maxTicks) {
    var span = Math.max(t1 - t0, HOUR);
    var step = TIME_STEPS.filter(function (s) { return span / s <= maxTicks; })[0];
    var ticks = [];
    if (!step) {  // months
      var months = Math.ceil(span / (30 * DAY) / maxTicks);
      var d = new Date(t0);
      var m = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + (d.getUTCDate() > 1 || t0 % DAY ? 1 : 0), 1);
      for (; m <= t1; m = Date.UTC(new Date(m).getUTCFullYear(), new Date(m).getUTCMonth() + months, 1)) {
        ticks.push(m);
      }
      return {ticks: ticks, step: 30 * DAY};
    }
    var first = step >= 7 * DAY ? Math.ceil((t0 - 4 * DAY) / step) * step + 4 * DAY  // Mondays
      : Math.ceil(t0 / step) * step;
    for (var t = first; t <= t1; t += step) ticks.push(t);
    return {ticks: ticks, step: step};
  }

  function tickLabel(t, step, first) {
    var d = new Date(t);
    var day = d.getUTCDate() + " " + MONTHS[d.getUTCMonth()];
    if (step >= 28 * DAY) return [MONTHS[d.getUTCMonth()] + " " + d.getUTCFullYear()];
    if (step >= DAY) return [day];
    var time = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    return first || t % DAY === 0 ? [time, day] : [time];
  }

  function drawLineChart(node, width, points) {
    var height = 240;
    var values = points.map(function (p) { return p.v; });
    var y = niceScale(Math.min(0, Math.min.apply(null, values)), Math.max(0, Math.max.apply(null, values)), 4,
      values.every(function (value) { return value === Math.round(value); }));
    var yLabels = [];
    for (var v = y.lo; v <= y.hi + y.step / 2; v += y.step) yLabels.push(v);
    var labelWidth = Math.max.apply(null, yLabels.map(function (l) { return formatNumber(l).length; }));
    var m = {top: 12, right: 18, bottom: 40, left: 14 + labelWidth * 7.5};
    var plotW = width - m.left - m.right;
    var plotH = height - m.top - m.bottom;
    var t0 = points[0].t;
    var t1 = points[points.length - 1].t;
    function px(t) { return m.left + (t1 === t0 ? plotW / 2 : (t - t0) / (t1 - t0) * plotW); }
    function py(value) { return m.top + (y.hi - value) / (y.hi - y.lo) * plotH; }

    var svg = svgEl("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": "Line chart of " + points.length + " points over time"}, node);
    var grid = svgEl("g", {"class": "grid"}, svg);
    yLabels.forEach(function (l) {
      svgEl("line", {x1: m.left, x2: width - m.right, y1: py(l), y2: py(l), "class": l === 0 ? "zero" : null}, grid);
      svgText(grid, m.left - 8, py(l) + 4, formatNumber(l), {"class": "y-label", "text-anchor": "end"});
    });
    var xt = timeTicks(t0, t1, Math.max(2, Math.floor(plotW / 90)));
    if (!xt.ticks.length) xt.ticks = t1 === t0 ? [t0] : [t0, t1];  // a span shorter than one step
    xt.ticks.forEach(function (t, i) {
      svgEl("line", {x1: px(t), x2: px(t), y1: m.top + plotH, y2: m.top + plotH + 5, "class": "tick"}, grid);
      var label = tickLabel(t, xt.step, i === 0);
      var half = 3.6 * Math.max.apply(null, label.map(function (line) { return line.length; }));
      var anchor = px(t) + half > width ? "end" : px(t) - half < 0 ? "start" : "middle";
      var text = svgText(grid, px(t), m.top + plotH + 18, "", {"class": "x-label", "text-anchor": anchor});
      label.forEach(function (line, j) {
        var tspan = svgEl("tspan", {x: px(t), dy: j ? 13 : 0}, text);
        tspan.textContent = line;
      });
    });

    // One segment per run of points: a gap wider than 1.5 steps (a period with no results) breaks the line.
    var step = Infinity;
    for (var i = 1; i < points.length; i++) step = Math.min(step, points[i].t - points[i - 1].t || Infinity);
    var segments = [[points[0]]];
    for (i = 1; i < points.length; i++) {
      if (points.length >= 3 && points[i].t - points[i - 1].t > 1.5 * step) segments.push([]);
      segments[segments.length - 1].push(points[i]);
    }
    var base = py(Math.max(y.lo, Math.min(0, y.hi)));
    segments.forEach(function (seg) {
      var line = seg.map(function (p, j) { return (j ? "L" : "M") + px(p.t).toFixed(1) + "," + py(p.v).toFixed(1); });
      var first = seg[0];
      var last = seg[seg.length - 1];
      svgEl("path", {"class": "area", d: line.join("") + "L" + px(last.t).toFixed(1) + "," + base +
        "L" + px(first.t).toFixed(1) + "," + base + "Z"}, svg);
      svgEl("path", {"class": "line", d: line.join("")}, svg);
    });
    var dots = svgEl("g", {"class": "points"}, svg);
    var r = points.length > 150 ? 1.5 : points.length > 60 ? 2.2 : 3;
    points.forEach(function (p) {
      var dot = svgEl("circle", {cx: px(p.t).toFixed(1), cy: py(p.v).toFixed(1), r: r, "data-time": p.iso,
        "data-value": p.v}, dots);
      svgEl("title", null, dot).textContent = formatTime(p.t) + ": " + formatNumber(p.v);
    });
  }

  function fitText(node, text, maxWidth) {
    node.textContent = text;
    if (!node.getComputedTextLength) return;
    var full = node.getComputedTextLength();
    if (!full || full <= maxWidth) {
      if (!full && text.length > maxWidth / 6.5) node.textContent = text.slice(0, Math.floor(maxWidth / 6.5) - 1) + "…";
      return;
    }
    var lo = 0;
    var hi = text.length;
    while (lo < hi) {  // the longest prefix that fits with an ellipsis
      var mid = Math.ceil((lo + hi) / 2);
      node.textContent = text.slice(0, mid) + "…";
      if (node.getComputedTextLength() <= maxWidth) lo = mid;
      else hi = mid - 1;
    }
    node.textContent = text.slice(0, lo) + "…";
  }

  function drawBarChart(node, width, rows) {
    var rowH = 26;
    var labelW = Math.min(Math.round(width * 0.42), 320);
    var valueW = 16 + 7.5 * Math.max.apply(null, rows.map(function (row) { return formatNumber(row.value).length; }));
    var barX = labelW + 10;
    var barW = Math.max(40, width - barX - valueW);
    var values = rows.map(function (row) { return row.value; });
    var lo = Math.min(0, Math.min.apply(null, values));
    var hi = Math.max(0, Math.max.apply(null, values));
    if (hi === lo) hi = lo + 1;
    function bx(value) { return barX + (value - lo) / (hi - lo) * barW; }
    var height = rows.length * rowH + 4;
    var svg = svgEl("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": "Bar chart of " + rows.length + " results"}, node);
    rows.forEach(function (row, i) {
      var label = keyLabel(row._id);
      var top = i * rowH + 2;
      var g = svgEl("g", {"class": "bar-row"}, svg);
      svgEl("title", null, g).textContent = label + ": " + formatNumber(row.value);
      fitText(svgText(g, labelW, top + rowH / 2 + 4, "", {"class": "bar-label", "text-anchor": "end"}), label, labelW);
      var x0 = bx(Math.min(0, row.value));
      svgEl("rect", {"class": "bar", x: x0.toFixed(1), y: top + 4, height: rowH - 8, rx: 3,
        width: Math.max(1, bx(Math.max(0, row.value)) - x0).toFixed(1), "data-value": row.value}, g);
      svgText(g, bx(Math.max(0, row.value)) + 6, top + rowH / 2 + 4, formatNumber(row.value), {"class": "bar-value"});
    });
  }

  // The page -------------------------------------------------------------------------------------

  function pageProblem(text) {
    var main = document.getElementById("reports");
    clear(main);
    main.appendChild(el("p", {"class": "page-error"}, [text]));
    document.getElementById("summary").textContent = "No reports to show.";
    document.documentElement.setAttribute("data-state", "done");
  }

  function showManifest(manifest) {
    if (!isObject(manifest) || !Array.isArray(manifest.reports)) {
      pageProblem("reports.js does not list any reports.");
      return;
    }
    var generatedMs = Date.parse(manifest.generated);
    var summary = document.getElementById("summary");
    clear(summary);
    summary.appendChild(document.createTextNode(manifest.reports.length +
      (manifest.reports.length === 1 ? " report" : " reports") + " · generated "));
    summary.appendChild(el("time", {datetime: manifest.generated, id: "generated"}, [
      isNaN(generatedMs) ? plainText(manifest.generated) : formatTime(generatedMs, true)]));
    if (!isNaN(generatedMs)) summary.appendChild(document.createTextNode(" (" + formatAgo(generatedMs) + ")"));

    var main = document.getElementById("reports");
    clear(main);
    if (!manifest.reports.length) main.appendChild(el("p", {"class": "note"}, ["This folder has no reports."]));
    // standard sections (standard.js) get the site view; every other section its own panel, as always
    var standard = manifest.reports.filter(function (report) { return report.standard === true; });
    var custom = manifest.reports.filter(function (report) { return report.standard !== true; });
    var panels = custom.map(function (report) {
      var panel = makePanel(report);
      main.appendChild(panel.node);
      setMeta(panel, generatedMs, null);
      return panel;
    });
    var i = 0;
    var lib = {el: el, svgEl: svgEl, svgText: svgText, clear: clear, loadReport: loadReport,
      formatNumber: formatNumber, addChart: addChart, formatTime: formatTime};
    if (standard.length && window.mongolStandard) {
      var view = el("div", {id: "standard", "class": "standard-view"});
      document.body.insertBefore(view, main);
      window.mongolStandard(view, standard, lib, function () { next(); });
    } else {
      next();
    }
    function next() {
      if (i >= panels.length) {
        document.documentElement.setAttribute("data-state", "done");
        return;
      }
      var panel = panels[i++];
      if (!panel.report.written) {
        showNote(panel, "missing", "Not available: " + panel.report.file + " has not been written yet " +
          "(its section has not succeeded so far).");
        next();
        return;
      }
      loadReport(panel.report, function (error, rows) {
        if (error) {
          showNote(panel, "error", "Not available: " + error.message + ".");
        } else {
          setMeta(panel, generatedMs, Array.isArray(rows) ? rows.length : null);
          drawReport(panel, rows);
        }
        next();
      });
    }
  }

  var manifest = null;
  window.mongolDashboard = function (data) { manifest = data; };
  document.documentElement.setAttribute("data-state", "loading");
  loadScript("reports.js?t=" + Date.now(), function (error) {
    if (error || !manifest) {
      pageProblem("reports.js could not be loaded: mongol-report writes it beside the reports on every run.");
    } else {
      showManifest(manifest);
    }
  });
})();
