/* Nurture web tracking (docs/tracking.md): first-party page views, no third party.
   <script src="https://www.example.com/t.js" defer></script> */
(function (w, d, n) {
  "use strict";
  // Do-Not-Track and Global Privacy Control: no cookie, no view, no form field.
  if (n.doNotTrack === "1" || w.doNotTrack === "1" || n.globalPrivacyControl === true) return;
  var script = d.currentScript;
  if (!script || !w.JSON || !w.URL) return;
  var base = new URL(".", script.src).href; // the API: /collect, /forms/ beside this file
  var COOKIE = "nurture_vid", FIELD = "nurture_visitor", PARAM = "nt";

  function visitor() {
    var found = d.cookie.match(/(?:^|;\s*)nurture_vid=([A-Za-z0-9_-]{16,64})/);
    var id = found && found[1];
    if (!id) {
      var bytes = new Uint8Array(16);
      w.crypto.getRandomValues(bytes);
      id = Array.prototype.map.call(bytes, function (b) {
        return (b + 256).toString(16).slice(1);
      }).join("");
    }
    // Renewed on each view: 400 days is the longest a browser keeps a cookie.
    d.cookie = COOKIE + "=" + id + "; path=/; max-age=34560000; SameSite=Lax" +
      (w.location.protocol === "https:" ? "; Secure" : "");
    return id;
  }

  var id = visitor();
  var url = new URL(w.location.href);
  var token = url.searchParams.get(PARAM);
  if (token !== null) {
    // A tracked email link: sent once with this view, then out of the address bar, so a
    // bookmark or a shared link does not carry it.
    url.searchParams.delete(PARAM);
    if (w.history && w.history.replaceState) w.history.replaceState(w.history.state, "", url.href);
  }
  function send(href, referrer, nt) {
    var view = { visitor: id, url: href.slice(0, 2000), title: d.title.slice(0, 500) || null,
      referrer: referrer.slice(0, 2000) || null };
    if (nt) view.nt = nt.slice(0, 100);
    var body = JSON.stringify(view), endpoint = base + "collect";
    // text/plain (what sendBeacon sends a string as): no CORS preflight from another origin.
    if (!(n.sendBeacon && n.sendBeacon(endpoint, body))) {
      w.fetch(endpoint, { method: "POST", body: body, keepalive: true, credentials: "omit",
        headers: { "Content-Type": "text/plain" } });
    }
  }
  function unhashed(href) { var u = new URL(href); u.hash = ""; return u.href; }
  send(url.href, d.referrer, token);

  // A single-page site changes the address without loading a page: each new address (not
  // a new #fragment) is a view, sent a moment later so the page's new title goes with it.
  var last = unhashed(url.href);
  function moved() {
    w.setTimeout(function () {
      var now = unhashed(w.location.href);
      if (now === last) return;
      var previous = last;
      last = now;
      send(w.location.href, previous);
    }, 100);
  }
  ["pushState", "replaceState"].forEach(function (name) {
    var original = w.history && w.history[name];
    if (typeof original !== "function") return;
    w.history[name] = function () {
      var result = original.apply(this, arguments);
      moved();
      return result;
    };
  });
  w.addEventListener("popstate", moved);

  // Forms posting to Nurture carry the visitor, so their lead gets its earlier views.
  function tag(form) {
    if (!form.action || form.action.indexOf(base + "forms/") !== 0) return;
    var input = form.elements[FIELD];
    if (!input) {
      input = d.createElement("input");
      input.type = "hidden";
      input.name = FIELD;
      form.appendChild(input);
    }
    input.value = id;
  }
  function tagAll() { Array.prototype.forEach.call(d.forms, tag); }
  d.addEventListener("submit", function (event) { tag(event.target); }, true);
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", tagAll);
  else tagAll();
})(window, document, navigator);
