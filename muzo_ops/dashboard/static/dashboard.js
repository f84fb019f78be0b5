// muzo jobs: live updates. The server sends "change" events (a change stream,
// or a polling tick where there is none); each becomes the "jobs-changed"
// event the page's htmx parts listen to, and they fetch themselves again.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-events");
  if (!url || !window.EventSource) { return; }
  var live = document.getElementById("live");
  var source = new EventSource(url);
  source.addEventListener("hello", function (e) {
    if (live) { live.textContent = "live: " + e.data; }
  });
  source.addEventListener("change", function () {
    if (window.htmx) { window.htmx.trigger(document.body, "jobs-changed"); }
  });
  source.onerror = function () {
    if (live) { live.textContent = "live: reconnecting"; }
  };
})();
