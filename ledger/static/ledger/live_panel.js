// The admin index's live panel: polls the status providers' JSON and renders each entry.
(function () {
  "use strict";
  const panel = document.getElementById("live-panel");
  if (!panel) return;
  const list = panel.querySelector(".zbl-entries");

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined && text !== null) n.textContent = text;
    return n;
  }

  function renderEntry(entry) {
    const box = node("div", `zbl-entry level-${entry.level}`);
    box.dataset.key = entry.key;
    const head = node("div", "zbl-entry-head");
    head.append(node("span", "zbl-entry-label", entry.label));
    const value = entry.link ? node("a", "zbl-entry-value", entry.value) : node("span", "zbl-entry-value", entry.value);
    if (entry.link) value.href = entry.link;
    head.append(value);
    box.append(head);
    if (entry.progress) {
      const bar = node("progress");
      bar.max = entry.progress.total;
      bar.value = entry.progress.done;
      box.append(bar, node("span", "zbl-entry-detail", entry.progress.label));
    }
    if (entry.detail) box.append(node("div", "zbl-entry-detail", entry.detail));
    if (entry.table) {
      const table = node("table", "zbl-entry-table");
      const header = node("tr");
      for (const column of entry.table.columns) header.append(node("th", "", column));
      table.append(header);
      entry.table.rows.forEach((row, i) => {
        const tr = node("tr", entry.table.alerts && entry.table.alerts[i] ? "alert" : "");
        row.forEach((cell, j) => {
          const td = node("td");
          if (j === 0 && entry.table.links && entry.table.links[i]) {
            const a = node("a", "", String(cell));
            a.href = entry.table.links[i];
            td.append(a);
          } else {
            td.textContent = String(cell);
          }
          tr.append(td);
        });
        table.append(tr);
      });
      box.append(table);
    }
    return box;
  }

  async function refresh() {
    let busy = false;
    try {
      const response = await fetch(panel.dataset.url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!response.ok) throw new Error(`status ${response.status}`);
      const body = await response.json();
      list.replaceChildren(...body.entries.map(renderEntry));
      busy = body.entries.some((entry) => entry.progress);
      panel.dataset.updated = String(Date.now());
      panel.classList.remove("stale");
    } catch (error) {
      panel.classList.add("stale");
    }
    window.setTimeout(refresh, busy ? 1000 : 3000);
  }

  refresh();
})();
