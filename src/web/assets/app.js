// operator dashboard: JSON forms for htmx, live updates over the WebSocket, the theme toggle,
// error toasts and synchronised scrolling in the handoff viewer. No inline script anywhere
// (the pages' Content-Security-Policy forbids it).
(function () {
  "use strict";

  // Forms post JSON to the API: numbers as numbers, switches as booleans, empty fields left out.
  htmx.defineExtension("json-form", {
    onEvent: function (name, evt) {
      if (name === "htmx:configRequest" && evt.detail.verb !== "get") {
        evt.detail.headers["Content-Type"] = "application/json";
      }
    },
    encodeParameters: function (xhr, parameters, elt) {
      var form = elt.closest("form") || elt;
      var out = {};
      form.querySelectorAll("input, textarea, select").forEach(function (el) {
        if (!el.name) return;
        if (el.type === "checkbox") { if (el.checked) out[el.name] = true; return; }
        if (el.value === "") return;
        out[el.name] = el.type === "number" ? Number(el.value) : el.value;
      });
      xhr.overrideMimeType("text/json");
      return JSON.stringify(out);
    }
  });

  var toast = function (text, ok) {
    var t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text;
    t.className = ok ? "ok" : "err";
    t.hidden = false;
    clearTimeout(t._timer);
    t._timer = setTimeout(function () { t.hidden = true; }, 6000);
  };

  // The page's live fragments are fetched again at most once per 400 ms, and always once after
  // the last event of a burst (htmx's own `throttle` drops it, which left the page showing a
  // state that had already changed).
  var refreshTimer = null, refreshPending = false;
  var refresh = function () {
    if (refreshTimer) { refreshPending = true; return; }
    htmx.trigger(document.body, "operator-event");
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      if (refreshPending) { refreshPending = false; refresh(); }
    }, 400);
  };

  document.body.addEventListener("htmx:responseError", function (evt) {
    var msg = "request failed (" + evt.detail.xhr.status + ")";
    try { msg = JSON.parse(evt.detail.xhr.responseText).error.message; } catch (e) { /* not JSON */ }
    toast(msg, false);
  });
  document.body.addEventListener("htmx:afterRequest", function (evt) {
    var elt = evt.detail.elt;
    if (!evt.detail.successful) return;
    // Only a form's own submission redirects or resets it (not a dry run from a button in it).
    if (elt.tagName === "FORM" && elt.dataset.redirect) { window.location = elt.dataset.redirect; return; }
    if (elt.tagName === "FORM" && elt.dataset.reset) { elt.reset(); toast("started", true); }
    if (elt.hasAttribute("hx-post")) refresh();
  });

  // Theme: dark by default, the choice remembered.
  var root = document.documentElement;
  var saved = localStorage.getItem("operator-theme");
  if (saved) root.dataset.theme = saved;
  var btn = document.getElementById("theme");
  if (btn) btn.addEventListener("click", function () {
    root.dataset.theme = root.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem("operator-theme", root.dataset.theme);
  });

  // Live: every event refreshes the fragments (so does every (re)connection: what happened while
  // the socket was not open is on the server); a session's output goes to #live.
  var live = document.getElementById("live");
  var patterns = ["chain:*", "orchestrator:*"];
  if (live) patterns.push("session:output:" + live.dataset.chain);
  var connect = function () {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(proto + location.host + "/ws?subscribe=" + encodeURIComponent(patterns.join(",")));
    ws.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev.kind === "session:output") {
        if (live && ev.data && ev.data.text) {
          if (live.dataset.filled !== "1") { live.textContent = ""; live.dataset.filled = "1"; }
          live.textContent += "[" + ev.sessionIndex + "] " + ev.data.text + "\n";
          if (live.textContent.length > 20000) live.textContent = live.textContent.slice(-15000);
          live.scrollTop = live.scrollHeight;
        }
        return;
      }
      if (ev.kind === "subscribed") return;
      refresh();
    };
    ws.onopen = refresh;
    ws.onclose = function () { setTimeout(connect, 2000); };
  };
  if (document.body.dataset.ws === "1") connect();

  // The handoff viewer's three columns scroll together.
  var cols = document.querySelectorAll("#viewer .scroll");
  var syncing = false;
  cols.forEach(function (c) {
    c.addEventListener("scroll", function () {
      if (syncing) return;
      syncing = true;
      var f = c.scrollTop / Math.max(1, c.scrollHeight - c.clientHeight);
      cols.forEach(function (o) { if (o !== c) o.scrollTop = f * (o.scrollHeight - o.clientHeight); });
      requestAnimationFrame(function () { syncing = false; });
    });
  });
})();
