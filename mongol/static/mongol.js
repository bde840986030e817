/* Mongol's tracking script: one hit per page view through Mongol's pixel, and custom events.
   No cookies, no storage, no dependencies; it talks to the pixel's host only. README: Tracking. */
(function () {
  "use strict";
  var me = document.currentScript;
  if (!me || (window.mongol && window.mongol.pixel)) return; // loaded twice: the first one counts
  var data = me.dataset;
  var pixel = data.pixel || new URL("pixel.gif", me.src).href;
  var site = data.site || location.hostname.replace(/^www\./, "");
  var last = null; // the url of the last view sent: the same url twice in a row is one view
  var current = null; // the whole address of the last view
  var sent = 0;
  var queued = window.mongol && window.mongol.q; // calls made before the script arrived

  function path() {
    return location.pathname + location.search;
  }

  // Encoded bytes each field may take: together they stay under the server's 8000-byte query limit.
  var LIMITS = {url: 2500, referrer: 2000, title: 1000, props: 1500, event: 200, screen: 10};

  function encode(value, limit) {
    var text = String(value);
    for (;;) {
      try {
        var encoded = encodeURIComponent(text);
      } catch (e) { // a lone surrogate
        text = text.toWellFormed ? text.toWellFormed()
          : text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|([^\uD800-\uDBFF]|^)[\uDC00-\uDFFF]/g, "$1\uFFFD");
        continue;
      }
      if (encoded.length <= limit) return encoded;
      text = text.slice(0, Math.floor(text.length * limit / encoded.length) - 1).replace(/[\uD800-\uDBFF]$/, "");
    }
  }

  function send(fields) {
    var query = "site=" + encode(site, 200);
    for (var name in fields) {
      var value = fields[name];
      if (value !== undefined && value !== null && value !== "") query += "&" + name + "=" + encode(value, LIMITS[name] || 1000);
    }
    // "_" is dropped by the server: it only keeps the browser from reusing an earlier answer
    var image = new Image(1, 1);
    image.src = pixel + "?" + query + "&_=" + (Date.now() % 1e8).toString(36) + (sent++).toString(36);
  }

  function view(referrer) {
    var url = path();
    if (url === last) return;
    last = url;
    send({url: url, title: document.title, referrer: referrer, screen: screen.width});
    current = location.href;
  }

  function event(name, props) {
    if (!name) return;
    send({url: path(), title: document.title, event: name,
          props: props === undefined ? undefined : typeof props === "string" ? props : JSON.stringify(props)});
  }

  // Single-page apps: a history change is a view of the new url, with the url of the last view as its
  // referrer (so it is no entry). It is sent after the current task: a title set right after
  // pushState is the one sent.
  function changed() {
    setTimeout(function () { view(current); }, 0);
  }

  function follow(method) {
    var original = history[method];
    history[method] = function () {
      var result = original.apply(this, arguments);
      changed();
      return result;
    };
  }

  function start() {
    // Reloaded, or come back to with the back button: document.referrer is still that of the first
    // arrival, which was counted then; the page is its own referrer, an internal view.
    var nav = performance.getEntriesByType ? performance.getEntriesByType("navigation")[0] : null;
    view(nav && (nav.type === "reload" || nav.type === "back_forward") ? location.href : document.referrer);
    follow("pushState");
    follow("replaceState");
    window.addEventListener("popstate", changed);
    // shown again from the back-forward cache, where no script starts again: a view, as above
    window.addEventListener("pageshow", function (e) {
      if (e.persisted) { last = null; view(location.href); }
    });
    if (queued) for (var i = 0; i < queued.length; i++) event.apply(null, queued[i]);
  }

  // Elements with data-mongol-event="name" send that event when clicked.
  document.addEventListener("click", function (e) {
    var el = e.target && e.target.closest && e.target.closest("[data-mongol-event]");
    if (el) event(el.getAttribute("data-mongol-event"));
  }, true);

  window.mongol = {pixel: pixel, event: event};

  // A prerendered page is counted when it is shown, not when the browser guesses it might be.
  if (document.prerendering) document.addEventListener("prerenderingchange", start, {once: true});
  else start();
})();
