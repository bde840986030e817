/* mongol-report dashboard: the site view of standard sections (`standard = yes`).
 *
 * Copied into the output folder by every run (edits here are overwritten). It reads SECTION.json (every
 * kept day's page views, visitors and bot hits) and, for the days of the chosen range, SECTION/YYYY-MM.json
 * (each day's hours and tables), and adds the days up in the browser: no server-side code. The site and the
 * range live in the URL's fragment (#site=example.com&range=7d, or range=custom&from=...&to=...), so a link
 * shows what its sender saw. Days are those of the section's time zone; "today" is the day of the last run.
 * Unique visitors over several days are the sum of each day's (visitor ids change every day).
 * Report data is user data: it only ever reaches the page as text nodes and attribute values.
 */
(function () {
  "use strict";

  var DAY = 86400000;
  var PANELS = [
    ["pages", "Pages", "Page"], ["entry-pages", "Entry pages", "Page"], ["sources", "Sources", "Source"],
    ["campaigns", "Campaigns", "Campaign"], ["browsers", "Browsers", "Browser"],
    ["os", "Operating systems", "OS"], ["devices", "Devices", "Device"], ["countries", "Countries", "Country"],
    ["events", "Events", "Event"],
  ];
  var RANGES = [
    ["today", "Today"], ["yesterday", "Yesterday"], ["7d", "Last 7 days"], ["30d", "Last 30 days"],
    ["90d", "Last 90 days"], ["month", "This month"], ["last-month", "Last month"], ["12m", "Last 12 months"],
    ["all", "All time"], ["custom", "Custom range"],
  ];
  var ISO_DAY = /^\d{4}-\d{2}-\d{2}$/;
  var regionNames = null;
  try {
    regionNames = new Intl.DisplayNames(["en"], {type: "region"});
  } catch (e) {
    regionNames = null;  // an older browser: codes alone
  }

  function dayNumber(iso) { return Math.round(Date.parse(iso + "T00:00:00Z") / DAY); }
  function isoDay(n) { return new Date(n * DAY).toISOString().slice(0, 10); }
  function monthOf(n) { return isoDay(n).slice(0, 7); }
  function validDay(text) { return typeof text === "string" && ISO_DAY.test(text) && !isNaN(Date.parse(text)); }

  /** [from, to] day numbers of a range, given today's and the first kept day's. */
  function resolveRange(state, today, first) {
    var d = new Date(today * DAY);
    var y = d.getUTCFullYear();
    var m = d.getUTCMonth();
    switch (state.range) {
      case "today": return [today, today];
      case "yesterday": return [today - 1, today - 1];
      case "30d": return [today - 29, today];
      case "90d": return [today - 89, today];
      case "month": return [Date.UTC(y, m, 1) / DAY, today];
      case "last-month": return [Date.UTC(y, m - 1, 1) / DAY, Date.UTC(y, m, 1) / DAY - 1];
      case "12m": return [Date.UTC(y - 1, m, d.getUTCDate()) / DAY + 1, today];
      case "all": return [Math.min(first, today), today];
      case "custom":
        if (validDay(state.from) && validDay(state.to)) {
          var a = dayNumber(state.from);
          var b = dayNumber(state.to);
          return a <= b ? [a, b] : [b, a];
        }
        return [today - 6, today];
      default: return [today - 6, today];
    }
  }

  function readHash() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    return {site: params.get("site"), range: params.get("range") || "7d", from: params.get("from"),
      to: params.get("to")};
  }

  function writeHash(state) {
    var params = new URLSearchParams();
    params.set("site", state.site);
    params.set("range", state.range);
    if (state.range === "custom") {
      params.set("from", state.from || "");
      params.set("to", state.to || "");
    }
    var hash = "#" + params.toString();
    if (window.location.hash !== hash) window.location.hash = hash;  // fires hashchange: drawn from there
  }

  // Adding days up ------------------------------------------------------------------------------

  function percent(part, whole) {
    if (!whole) return "–";
    var p = part / whole * 100;
    return (p >= 10 || p === 0 ? p.toFixed(0) : p.toFixed(1)) + "%";
  }

  function change(current, previous) {
    if (!previous) return {text: current ? "new" : "no change", ratio: null};
    var ratio = (current - previous) / previous;
    var pct = Math.round(ratio * 100);
    return {text: (pct > 0 ? "+" : pct < 0 ? "−" : "±") + Math.abs(pct) + "%", ratio: ratio};
  }

  function totals(byDay, from, to) {
    var sum = {pageviews: 0, visitors: 0, bots: 0};
    for (var n = from; n <= to; n++) {
      var t = byDay[isoDay(n)];
      if (t) {
        sum.pageviews += t[0];
        sum.visitors += t[1];
        sum.bots += t[2];
      }
    }
    return sum;
  }

  /** One panel's rows over the days: {key, count, title?}, biggest first; and the panel's total. */
  function mergeTable(docs, name) {
    var rows = {};
    var total = 0;
    docs.forEach(function (doc) {
      (doc[name] || []).forEach(function (row) {
        var count = row[row.length - 1];
        var keyParts = name === "pages" ? [row[0]] : row.slice(0, -1);
        var id = JSON.stringify(keyParts);
        var entry = rows[id] || (rows[id] = {key: keyParts, count: 0, titles: {}});
        entry.count += count;
        if (name === "pages" && typeof row[1] === "string") entry.titles[row[1]] = (entry.titles[row[1]] || 0) + count;
        total += count;
      });
      if (doc.rest && doc.rest[name]) total += doc.rest[name];
    });
    var list = Object.keys(rows).map(function (id) {
      var entry = rows[id];
      var best = null;
      Object.keys(entry.titles).forEach(function (t) {
        if (best === null || entry.titles[t] > entry.titles[best] || (entry.titles[t] === entry.titles[best] && t > best)) best = t;
      });
      return {id: id, key: entry.key, count: entry.count, title: best};
    });
    list.sort(function (a, b) { return b.count - a.count || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0); });
    return {rows: list, total: total};
  }

  // The view ------------------------------------------------------------------------------------

  window.mongolStandard = function (container, reports, lib, ready) {
    var el = lib.el;
    var indexes = {};  // report name -> SECTION.json's data
    var months = {};  // report name + month -> SECTION/YYYY-MM.json's data
    var drawing = 0;
    var titles = {};  // url -> title, from the pages panel, for entry pages

    var siteSelect = el("select", {id: "site", "aria-label": "Site"});
    reports.forEach(function (report) {
      siteSelect.appendChild(el("option", {value: report.site}, [
        report.site + (report.timezone && report.timezone !== "UTC" ? " (" + report.timezone + ")" : "")]));
    });
    var rangeSelect = el("select", {id: "range", "aria-label": "Date range"});
    RANGES.forEach(function (r) { rangeSelect.appendChild(el("option", {value: r[0]}, [r[1]])); });
    var fromInput = el("input", {type: "date", id: "from", "aria-label": "From"});
    var toInput = el("input", {type: "date", id: "to", "aria-label": "To"});
    var apply = el("button", {type: "button", id: "apply"}, ["Apply"]);
    var custom = el("span", {"class": "custom-range"}, [fromInput, " – ", toInput, " ", apply]);
    var period = el("p", {"class": "period", id: "period"});
    var headline = el("div", {"class": "headline"});
    var bots = el("p", {"class": "bots note", "data-metric": "bots"});
    var chart = el("div", {"class": "site-chart"});
    var grid = el("div", {"class": "panels"});
    var problem = el("p", {"class": "problem", hidden: "hidden"});
    var section = el("section", {"class": "standard", "data-state": "loading"}, [
      el("div", {"class": "controls"}, [siteSelect, rangeSelect, custom]), period, problem, headline, bots, chart,
      grid]);
    container.appendChild(section);

    function current() {
      var state = readHash();
      var report = reports.filter(function (r) { return r.site === state.site; })[0] || reports[0];
      state.site = report.site;
      if (!RANGES.some(function (r) { return r[0] === state.range; })) state.range = "7d";
      return {state: state, report: report};
    }

    siteSelect.addEventListener("change", function () {
      var state = current().state;
      state.site = siteSelect.value;
      writeHash(state);
    });
    rangeSelect.addEventListener("change", function () {
      var state = current().state;
      state.range = rangeSelect.value;
      if (state.range === "custom") {
        state.from = fromInput.value || state.from;
        state.to = toInput.value || state.to;
      }
      writeHash(state);
    });
    apply.addEventListener("click", function () {
      var state = current().state;
      state.range = "custom";
      state.from = fromInput.value;
      state.to = toInput.value;
      writeHash(state);
    });
    window.addEventListener("hashchange", function () { draw(function () {}); });

    function load(report, file, key, cache, done) {
      if (cache[key]) {
        done(null, cache[key]);
        return;
      }
      lib.loadReport({file: file, callback: report.callback, written: report.written}, function (error, data) {
        if (!error) cache[key] = data;
        done(error, data);
      });
    }

    function draw(done) {
      var mine = ++drawing;
      var now = current();
      var report = now.report;
      var state = now.state;
      section.setAttribute("data-state", "loading");
      siteSelect.value = report.site;
      rangeSelect.value = state.range;
      custom.hidden = state.range !== "custom";
      if (!report.written) {
        fail("Not available: " + report.file + " has not been written yet (its section has not succeeded so far).");
        done();
        return;
      }
      load(report, report.file, report.name, indexes, function (error, index) {
        if (mine !== drawing) return done();
        if (error || !index || !Array.isArray(index.days)) {
          fail("Not available: " + (error ? error.message : report.file + " is not a standard report") + ".");
          return done();
        }
        var today = dayNumber(index.today);
        var first = index.days.length ? dayNumber(index.days[0][0]) : today;
        var range = resolveRange(state, today, first);
        var wanted = [];
        for (var n = range[0]; n <= range[1]; n++) {
          var m = monthOf(n);
          if (wanted.indexOf(m) < 0 && index.months.indexOf(m) >= 0) wanted.push(m);
        }
        var docs = {};
        (function next(i) {
          if (mine !== drawing) return done();
          if (i >= wanted.length) {
            show(report, index, range, docs);
            section.setAttribute("data-state", "done");
            return done();
          }
          var file = report.file.replace(/\.json$/, "") + "/" + wanted[i] + ".json";
          load(report, file, report.name + " " + wanted[i], months, function (error2, month) {
            if (error2 || !month || typeof month.days !== "object") {
              fail("Not available: " + file + (error2 ? " " + error2.message : " holds no days") + ".");
              return done();
            }
            Object.keys(month.days).forEach(function (day) { docs[day] = month.days[day]; });
            next(i + 1);
          });
        })(0);
      });
    }

    function fail(text) {
      problem.hidden = false;
      problem.textContent = text;
      lib.clear(headline);
      lib.clear(grid);
      lib.clear(chart);
      section.setAttribute("data-state", "error");
    }

    function show(report, index, range, docs) {
      problem.hidden = true;
      var from = range[0];
      var to = range[1];
      var length = to - from + 1;
      section.setAttribute("data-site", report.site);
      section.setAttribute("data-from", isoDay(from));
      section.setAttribute("data-to", isoDay(to));
      fromInput.value = isoDay(from);
      toInput.value = isoDay(to);
      period.textContent = (from === to ? isoDay(from) : isoDay(from) + " – " + isoDay(to)) + " · " +
        report.site + " · days in " + (index.timezone || "UTC") + " · compared with the " + length +
        (length === 1 ? " day" : " days") + " before";
      var byDay = {};
      index.days.forEach(function (row) { byDay[row[0]] = row.slice(1); });
      var cur = totals(byDay, from, to);
      var prev = totals(byDay, from - length, from - 1);
      lib.clear(headline);
      var perVisitor = cur.visitors ? cur.pageviews / cur.visitors : 0;
      var prevPerVisitor = prev.visitors ? prev.pageviews / prev.visitors : 0;
      [["visitors", "Unique visitors", cur.visitors, prev.visitors],
        ["pageviews", "Page views", cur.pageviews, prev.pageviews],
        ["views-per-visitor", "Views per visitor", Math.round(perVisitor * 100) / 100,
          Math.round(prevPerVisitor * 100) / 100]].forEach(function (metric) {
        var delta = change(metric[2], metric[3]);
        headline.appendChild(el("div", {"class": "metric", "data-metric": metric[0], "data-value": metric[2],
          "data-previous": metric[3]}, [
          el("span", {"class": "metric-label"}, [metric[1]]),
          el("span", {"class": "metric-value"}, [lib.formatNumber(metric[2])]),
          el("span", {"class": "metric-change" + (delta.ratio > 0 ? " up" : delta.ratio < 0 ? " down" : ""),
            "data-change": delta.ratio === null ? "" : delta.ratio.toFixed(4)}, [delta.text]),
        ]));
      });
      bots.setAttribute("data-value", cur.bots);
      bots.textContent = cur.bots ? lib.formatNumber(cur.bots) + (cur.bots === 1 ? " bot hit" : " bot hits") +
        " not counted in any figure." : "No bot hits in this range.";

      var inRange = [];
      for (var n = from; n <= to; n++) if (docs[isoDay(n)]) inRange.push(docs[isoDay(n)]);
      drawChart(from, to, byDay, docs);
      lib.clear(grid);
      var pages = mergeTable(inRange, "pages");
      titles = {};
      pages.rows.forEach(function (row) { if (row.title !== null) titles[row.key[0]] = row.title; });
      PANELS.forEach(function (p) {
        grid.appendChild(panel(p, p[0] === "pages" ? pages : mergeTable(inRange, p[0])));
      });
    }

    function label(name, key) {
      var v = key[0];
      if (name === "sources") return v === null ? "Direct / none" : String(v);
      if (name === "campaigns") {  // [utm_source, utm_medium, utm_campaign]: "november · newsletter / email"
        return (key[2] === null ? "(no campaign)" : String(key[2])) + " · " +
          (key[0] === null ? "(no source)" : String(key[0])) + (key[1] !== null ? " / " + String(key[1]) : "");
      }
      if (name === "countries" && typeof v === "string" && regionNames) {
        var full = null;
        try { full = regionNames.of(v); } catch (e) { full = null; }
        return full && full !== v ? full + " (" + v + ")" : v;
      }
      return v === null ? "(none)" : typeof v === "string" ? v : JSON.stringify(v);
    }

    function panel(p, merged) {
      var name = p[0];
      var body = el("tbody");
      merged.rows.forEach(function (row, i) {
        var cellLabel;
        if (name === "pages" || name === "entry-pages") {
          var url = row.key[0] === null ? "(no url)" : String(row.key[0]);
          var title = name === "pages" ? row.title : titles[row.key[0]];
          cellLabel = el("td", {"class": "label"}, title ? [el("span", {"class": "title"}, [title]), " ",
            el("span", {"class": "url"}, [url])] : [el("span", {"class": "url"}, [url])]);
        } else {
          cellLabel = el("td", {"class": "label"}, [label(name, row.key)]);
        }
        var share = merged.total ? row.count / merged.total : 0;
        var bar = el("span", {"class": "share-bar", style: "width:" + (share * 100).toFixed(1) + "%"});
        cellLabel.insertBefore(bar, cellLabel.firstChild);
        body.appendChild(el("tr", {"data-key": JSON.stringify(row.key), "data-count": row.count}, [
          el("td", {"class": "num rank"}, [String(i + 1)]), cellLabel,
          el("td", {"class": "num count"}, [lib.formatNumber(row.count)]),
          el("td", {"class": "num share"}, [percent(row.count, merged.total)]),
        ]));
      });
      var content = merged.rows.length ? el("div", {"class": "table-wrap"}, [el("table", null, [
        el("thead", null, [el("tr", null, [el("th", {"class": "num rank", scope: "col"}, ["#"]),
          el("th", {scope: "col"}, [p[2]]),
          el("th", {"class": "num", scope: "col"}, [name === "events" ? "Events" : "Views"]),
          el("th", {"class": "num", scope: "col"}, ["Share"])])]),
        body])]) : el("p", {"class": "note"}, [name === "countries" ? "None in this range (countries need " +
          "mongol-serve --geoip)." : "None in this range."]);
      return el("section", {"class": "report site-panel", "data-panel": name, "data-total": merged.total}, [
        el("header", null, [el("h2", null, [p[1]])]), content]);
    }

    // The chart: visitors and page views per day, or per hour for a single day -------------------

    function drawChart(from, to, byDay, docs) {
      var points = [];
      if (from === to) {
        var hours = {};
        ((docs[isoDay(from)] || {}).hours || []).forEach(function (h) { hours[h[0]] = h; });
        for (var h = 0; h < 24; h++) {
          var row = hours[h] || [h, 0, 0, 0];
          points.push({t: isoDay(from) + "T" + (h < 10 ? "0" : "") + h + ":00", label: (h < 10 ? "0" : "") + h + ":00",
            pageviews: row[1], visitors: row[2]});
        }
      } else {
        for (var n = from; n <= to; n++) {
          var t = byDay[isoDay(n)] || [0, 0, 0];
          points.push({t: isoDay(n), label: isoDay(n).slice(5), pageviews: t[0], visitors: t[1]});
        }
      }
      lib.clear(chart);
      chart.setAttribute("data-unit", from === to ? "hour" : "day");
      lib.addChart(chart, "chart visits-chart", function (node, width) { lineChart(node, width, points); });
      chart.appendChild(el("p", {"class": "legend"}, [el("span", {"class": "key visitors"}, ["Visitors"]), " ",
        el("span", {"class": "key pageviews"}, ["Page views"])]));
    }

    function lineChart(node, width, points) {
      var height = 220;
      var m = {top: 12, right: 12, bottom: 28, left: 44};
      var max = 1;
      points.forEach(function (p) { max = Math.max(max, p.pageviews, p.visitors); });
      var step = Math.pow(10, Math.floor(Math.log(max) / Math.LN10));
      var top = Math.ceil(max / step) * step;
      var plotW = width - m.left - m.right;
      var plotH = height - m.top - m.bottom;
      function px(i) { return m.left + (points.length === 1 ? plotW / 2 : i / (points.length - 1) * plotW); }
      function py(v) { return m.top + (1 - v / top) * plotH; }
      var svg = lib.svgEl("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img",
        "aria-label": "Visitors and page views, " + points.length + " points"}, node);
      var axis = lib.svgEl("g", {"class": "grid"}, svg);
      [0, top / 2, top].forEach(function (v) {
        lib.svgEl("line", {x1: m.left, x2: width - m.right, y1: py(v), y2: py(v), "class": v ? null : "zero"}, axis);
        lib.svgText(axis, m.left - 6, py(v) + 4, lib.formatNumber(v), {"text-anchor": "end"});
      });
      var every = Math.max(1, Math.ceil(points.length / Math.max(2, Math.floor(plotW / 70))));
      points.forEach(function (p, i) {
        if (i % every === 0) lib.svgText(axis, px(i), height - 8, p.label, {"text-anchor": "middle"});
      });
      ["pageviews", "visitors"].forEach(function (series) {
        var d = points.map(function (p, i) { return (i ? "L" : "M") + px(i).toFixed(1) + "," + py(p[series]).toFixed(1); });
        lib.svgEl("path", {"class": "line " + series, d: d.join("")}, svg);
      });
      var dots = lib.svgEl("g", {"class": "points"}, svg);
      points.forEach(function (p, i) {
        var dot = lib.svgEl("circle", {cx: px(i).toFixed(1), cy: py(p.pageviews).toFixed(1), r: points.length > 60 ? 1.5 : 3,
          "data-time": p.t, "data-pageviews": p.pageviews, "data-visitors": p.visitors}, dots);
        lib.svgEl("title", null, dot).textContent = p.t + ": " + lib.formatNumber(p.visitors) + " visitors, " +
          lib.formatNumber(p.pageviews) + " page views";
      });
    }

    draw(ready);
  };
})();
