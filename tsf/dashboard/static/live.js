// Live updates of the dashboard from the site's event stream (/<SITE>/events).
"use strict";
(function () {
  const live = document.querySelector("[data-live]");
  if (!live || !window.EventSource) { return; }
  const site = document.body.dataset.prefix.replace(/\/dashboard$/, "");
  const page = live.dataset.live;
  const one = page === "job" ? live.dataset.job : null;
  const url = site + "/events" + (one ? "?job=" + encodeURIComponent(one) : "");
  const source = new EventSource(url);
  const TERMINAL = ["SUCCESSFUL", "FAILED"];

  function paint(cell, state) {
    cell.textContent = state;
    cell.className = "state state-" + state;
  }

  source.addEventListener("job", function (message) {
    const data = JSON.parse(message.data);
    if (page === "job" && data.id === one) {
      const cell = document.getElementById("state");
      const changed = cell.textContent !== data.state;
      paint(cell, data.state);
      document.getElementById("reason").textContent = data.reason || "";
      if (changed && TERMINAL.includes(data.state)) {
        source.close();
        window.location.reload(); // exit code, files and log are final now
      }
      return;
    }
    const cell = document.querySelector('td[data-job="' + CSS.escape(data.id) + '"]');
    if (cell) { paint(cell, data.state); }
  });
  source.addEventListener("instance", function (message) {
    const data = JSON.parse(message.data);
    const cell = document.querySelector('td[data-instance="' + CSS.escape(data.id) + '"]');
    if (cell) { paint(cell, data.state); }
  });
})();
