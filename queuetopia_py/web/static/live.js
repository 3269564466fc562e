// Live pages: the server sends a `change` event when the scope's queues change, and
// htmx refreshes the page's #live region (hx-trigger="queuetopia:change from:body").
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-live-url");
  var state = document.getElementById("live-state");
  if (!url || !window.EventSource) {
    return;
  }
  var source = new EventSource(url);
  source.addEventListener("open", function () {
    state.textContent = "live";
    state.className = "live-state on";
  });
  source.addEventListener("error", function () {
    state.textContent = "reconnecting…";
    state.className = "live-state off";
  });
  source.addEventListener("change", function () {
    htmx.trigger(body, "queuetopia:change");
  });
})();
