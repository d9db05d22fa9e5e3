// The console's own script: draws the charts, follows the live feed and keeps SLA
// countdowns current. Pages carry data in attributes; there is no inline script (CSP).
(function () {
  "use strict";

  function drawCharts(root) {
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) return;
      canvas.dataset.drawn = "1";
      var config = JSON.parse(canvas.dataset.chart);
      config.options = Object.assign({ responsive: true, maintainAspectRatio: false,
                                       animation: false }, config.options || {});
      new window.Chart(canvas, config);
    });
  }

  function followFeeds(root) {
    root.querySelectorAll("ul[data-feed]").forEach(function (list) {
      if (list.dataset.following) return;
      list.dataset.following = "1";
      var source = new EventSource(list.dataset.feed);
      source.onmessage = function (event) {
        var item = document.createElement("li");
        item.innerHTML = event.data;  // the server escaped it (services/live_feed.py)
        list.prepend(item);
        var empty = list.parentElement.querySelector("[data-feed-empty]");
        if (empty) empty.hidden = true;
        while (list.children.length > 50) list.lastElementChild.remove();
      };
    });
  }

  // The same words as the server's (services/handoff_inbox.py countdown): the two
  // largest of days, hours and minutes.
  function duration(ms) {
    var minutes = Math.floor(ms / 60000);
    var parts = [[Math.floor(minutes / 1440), "d"], [Math.floor(minutes / 60) % 24, "h"],
                 [minutes % 60, "min"]];
    while (parts.length && parts[0][0] === 0) parts.shift();
    var shown = parts.slice(0, 2).filter(function (p) { return p[0]; });
    return shown.map(function (p) { return p[0] + " " + p[1]; }).join(" ") || "0 min";
  }

  function left(ms) {
    if (Math.abs(ms) < 60000) return "due now";
    return ms > 0 ? "due in " + duration(ms) : "overdue by " + duration(-ms);
  }

  function countdowns() {
    document.querySelectorAll("time[data-countdown]").forEach(function (time) {
      var ms = new Date(time.getAttribute("datetime")).getTime() - Date.now();
      time.textContent = left(ms);
      time.classList.toggle("overdue", ms < 0);
    });
  }

  function start(root) {
    drawCharts(root);
    followFeeds(root);
  }

  document.addEventListener("DOMContentLoaded", function () {
    start(document);
    setInterval(countdowns, 30000);
  });
  document.addEventListener("htmx:afterSwap", function (event) { start(event.target); });
})();
