// The comparison page: one bar chart per figure, drawn with the vendored Chart.js.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("compare-data").textContent);
  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  const text = dark ? "#ddd" : "#333";
  const grid = dark ? "rgba(255,255,255,0.15)" : "rgba(0,0,0,0.1)";
  const base = { tps: "#417690", p99_ms: "#c05600", success_rate: "#1e7e34" };

  for (const key of ["tps", "p99_ms", "success_rate", "balance_loss"]) {
    const values = data.series[key];
    const colours = values.map((v) => (key === "balance_loss" ? (v ? "#b02a37" : "#1e7e34") : base[key]));
    new window.Chart(document.getElementById("chart-" + key), {
      type: "bar",
      data: { labels: data.labels, datasets: [{ data: values, backgroundColor: colours }] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: { legend: { display: false } },
        scales: {
          x: { ticks: { color: text }, grid: { color: grid } },
          y: { beginAtZero: true, ticks: { color: text }, grid: { color: grid },
            max: key === "success_rate" ? 100 : undefined },
        },
      },
    });
  }
  document.body.dataset.chartsReady = "true";
})();
