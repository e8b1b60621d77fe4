// A launch's progress page: polls the launch's state and reloads with the results when done.
(function () {
  "use strict";
  const main = document.querySelector("[data-state-url]");
  if (!main || !["starting", "running"].includes(main.dataset.status)) return;
  const status = document.getElementById("launch-status");

  async function poll() {
    try {
      const response = await fetch(main.dataset.stateUrl, { cache: "no-store" });
      const state = await response.json();
      status.textContent = state.status;
      state.runs.forEach((run, i) => {
        const row = main.querySelector(`tr[data-index="${i}"]`);
        if (!row) return;
        row.querySelector("code").textContent = run.strategy;
        const bar = row.querySelector("progress");
        bar.max = run.total;
        bar.value = run.done;
        row.querySelector(".zbl-count").textContent = `${run.done} / ${run.total}`;
      });
      if (!["starting", "running"].includes(state.status)) {
        window.location.reload();
        return;
      }
    } catch (error) {
      status.textContent = "unreachable, retrying…";
    }
    window.setTimeout(poll, 500);
  }
  poll();
})();
