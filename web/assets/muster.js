// Muster's dashboard script: keeps relative times ("3 min ago") fresh
// between live updates. Pages read fine without it.
(function () {
  "use strict";
  function relative(seconds) {
    var magnitude = Math.abs(seconds);
    var amount;
    if (magnitude < 5) return "just now";
    if (magnitude < 60) amount = magnitude + " s";
    else if (magnitude < 3600) amount = Math.floor(magnitude / 60) + " min";
    else if (magnitude < 86400) amount = Math.floor(magnitude / 3600) + " h";
    else amount = Math.floor(magnitude / 86400) + " d";
    return seconds >= 0 ? amount + " ago" : "in " + amount;
  }
  function refresh() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time[data-relative]").forEach(function (el) {
      var then = Date.parse(el.getAttribute("datetime")) / 1000;
      if (!isNaN(then)) el.textContent = relative(Math.floor(now - then));
    });
  }
  setInterval(refresh, 15000);
  document.addEventListener("htmx:afterSettle", refresh);
})();
