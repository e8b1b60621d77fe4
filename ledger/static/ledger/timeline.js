// The conflict visualizer: one bar per attempt, from its start to its finish, drawn as SVG.
// Data comes from the page (json_script "timeline-data"), computed by ledger.selectors.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const LABEL = 270, TOP = 28, RIGHT = 56;
  const PALETTE = ["#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#2ca02c"];

  const data = JSON.parse(document.getElementById("timeline-data").textContent);
  const box = document.getElementById("timeline");
  const label = document.getElementById("focus-label");
  const attempts = data.attempts;
  const byId = new Map(attempts.map((a) => [a.id, a]));
  const groups = data.lost_updates;
  const instanceColour = new Map(data.instances.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
  let focus = "story";

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function culprits(attempt) {
    return attempt.conflicts.map((c) => c.by).filter((id) => id !== null && byId.has(id));
  }

  function event(attempt, name) {
    return attempt.events.find((e) => e.event === name);
  }

  function members(index) {
    return groups[index].attempts.map((id) => byId.get(id)).filter(Boolean);
  }

  function withCulprits(attempt) {
    const ids = new Set([attempt.id, ...culprits(attempt)]);
    return attempts.filter((a) => ids.has(a.id));
  }

  // Which attempts to draw, and what the reader is looking at.
  function select(mode) {
    const retried = attempts.filter((a) => a.retries > 0 || a.conflicts.length > 0);
    if (mode === "story") {
      if (groups.length) return select("group:0");
      if (retried.length) return select("attempt:" + retried[0].id);
      return select("all");
    }
    if (mode === "all") return { rows: attempts, text: `All ${attempts.length} attempts.` };
    if (mode === "lost") {
      return { rows: attempts.filter((a) => a.lost_group !== null), text: "Every attempt that took part in a lost update." };
    }
    if (mode === "retried") return { rows: retried, text: "Every attempt that hit a version conflict and retried." };
    if (mode.startsWith("group:")) {
      const index = Number(mode.slice(6));
      const group = groups[index];
      const rows = members(index);
      const instances = new Set(rows.map((a) => a.instance)).size;
      return {
        rows,
        text: `Lost update ${index + 1} of ${groups.length}: ${group.attempts.length} attempts read version ` +
          `${group.version_read} and all wrote version ${group.version_read + 1}; #${group.survivor} wrote last` +
          (instances > 1 ? ` (they ran on ${instances} different instances).` : "."),
        next: groups.length > 1 ? "group:" + ((index + 1) % groups.length) : null,
      };
    }
    if (mode.startsWith("attempt:")) {
      const attempt = byId.get(Number(mode.slice(8)));
      if (!attempt) return select("all");
      if (attempt.lost_group !== null) return { ...select("group:" + attempt.lost_group), highlight: attempt.id };
      const rows = withCulprits(attempt);
      const why = attempt.conflicts.length
        ? ` It hit ${attempt.conflicts.length} version conflict(s); the other bars are the attempts that wrote first.`
        : "";
      const index = retried.indexOf(attempt);
      return {
        rows,
        text: `Attempt #${attempt.id} (${attempt.outcome}, ${attempt.retries} retries).` + why,
        highlight: attempt.id,
        next: index >= 0 && retried.length > 1 ? "attempt:" + retried[(index + 1) % retried.length].id : null,
      };
    }
    return select("all");
  }

  function niceStep(span) {
    const raw = span / 8;
    const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
    for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  function ms(us) {
    return (us / 1000).toLocaleString(undefined, { maximumFractionDigits: us < 10000 ? 2 : 1 }) + " ms";
  }

  function describe(a) {
    const lines = [`#${a.id} · ${a.strategy} · ${a.outcome} · ${a.amount} · ${ms(a.end - a.start)}`];
    lines.push(`instance ${a.instance}`);
    if (a.lock_wait_us !== null) lines.push(`waited ${ms(a.lock_wait_us)} for the lock`);
    for (const e of a.events) {
      const extra = Object.entries(e).filter(([k]) => k !== "t_us" && k !== "event").map(([k, v]) => `${k}=${v}`);
      lines.push(`${ms(e.t_us)}: ${e.event} ${extra.join(" ")}`);
    }
    if (a.lost_group !== null) lines.push("lost update: another attempt read the same version and wrote too");
    return lines.join("\n");
  }

  function render() {
    const chosen = select(focus);
    const rows = chosen.rows;
    label.textContent = chosen.text || "";
    if (chosen.next) {
      const next = document.createElement("button");
      next.type = "button";
      next.className = "zbl-link";
      next.textContent = "next →";
      next.addEventListener("click", () => setFocus(chosen.next));
      label.append(" ", next);
    }
    box.replaceChildren();
    if (!rows.length) {
      box.textContent = "Nothing to draw.";
      return;
    }
    const t0 = Math.min(...rows.map((a) => a.start));
    const t1 = Math.max(...rows.map((a) => a.end));
    const span = Math.max(t1 - t0, 1);
    const width = Math.max(box.clientWidth, 640);
    const plot = width - LABEL - RIGHT;
    const x = (t) => LABEL + ((t - t0) / span) * plot;
    const showVersions = rows.length <= 60;
    const ROW = showVersions ? 30 : 18;
    const height = TOP + rows.length * ROW + 8;
    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, box);
    const defs = el("defs", {}, svg);
    const hatch = el("pattern", { id: "zbl-hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 6, height: 6, class: "hatch-bg" }, hatch);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch-line" }, hatch);

    const axis = el("g", { class: "axis" }, svg);
    const step = niceStep(span);
    for (let t = 0; t <= span; t += step) {
      el("line", { x1: x(t0 + t), x2: x(t0 + t), y1: TOP - 6, y2: height, class: "tick" }, axis);
      el("text", { x: x(t0 + t), y: TOP - 10, class: "tick-label" }, axis, ms(t));
    }

    const y = new Map();
    const writeAt = new Map();
    rows.forEach((a, i) => {
      const top = TOP + i * ROW;
      y.set(a.id, top + ROW / 2);
      const classes = ["attempt", "outcome-" + a.outcome];
      if (a.lost_group !== null) classes.push("lost");
      if (a.retries > 0) classes.push("retried");
      if (chosen.highlight === a.id) classes.push("highlight");
      const g = el("g", { class: classes.join(" "), id: "attempt-" + a.id, "data-attempt": a.id }, svg);
      el("title", {}, g, describe(a));
      el("rect", { x: 0, y: top, width, height: ROW, class: "row-bg" }, g);
      el("rect", { x: 6, y: top + ROW / 2 - 5, width: 8, height: 10, fill: instanceColour.get(a.instance) || "#999" }, g);
      const versions = a.version_before === null ? "" : ` v${a.version_before}→${a.version_after ?? "·"}`;
      const money = a.balance_before === null ? "" : ` ${a.balance_before}→${a.balance_after ?? "·"}`;
      el("text", { x: 20, y: top + ROW / 2 + 4, class: "row-label" }, g, `#${a.id}${versions}${money}`);
      const left = x(a.start), right = Math.max(x(a.end), left + 2);
      el("rect", { x: left, y: top + ROW / 2 - 6, width: right - left, height: 12, rx: 2, class: "bar" }, g);
      const locked = event(a, "lock_acquired");
      if (locked && x(locked.t_us) - left > 1) {
        el("rect", { x: left, y: top + ROW / 2 - 6, width: x(locked.t_us) - left, height: 12, class: "wait" }, g);
      }
      for (const e of a.events) {
        const ex = x(e.t_us), ey = top + ROW / 2;
        if (e.event === "lock_acquired") {
          el("path", { d: `M${ex} ${ey - 5} L${ex + 4} ${ey} L${ex} ${ey + 5} L${ex - 4} ${ey} Z`, class: "mark lock" }, g);
        } else if (e.event === "read") {
          el("circle", { cx: ex, cy: ey, r: 3.5, class: "mark read" }, g);
          if (showVersions) el("text", { x: ex - 4, y: top + 7, class: "mark-label" }, g, "read v" + e.version);
        } else if (e.event === "written") {
          el("path", { d: `M${ex} ${ey - 6} L${ex + 5} ${ey + 5} L${ex - 5} ${ey + 5} Z`, class: "mark write" }, g);
          if (showVersions) el("text", { x: ex - 4, y: top + ROW - 1, class: "mark-label" }, g, "wrote v" + e.version);
          writeAt.set(a.id, ex);
        } else if (e.event === "conflict") {
          el("text", { x: ex, y: ey + 4, class: "mark conflict" }, g, "✕");
        }
      }
      g.addEventListener("click", () => setFocus("attempt:" + a.id));
    });

    // Lost updates: join the writes of each group in the order they happened.
    for (const group of groups) {
      const points = group.attempts.filter((id) => writeAt.has(id)).map((id) => `${writeAt.get(id)},${y.get(id)}`);
      if (points.length > 1) el("polyline", { points: points.join(" "), class: "lost-link" }, svg);
    }
    // Conflicts: from the conflict mark to the write that caused it.
    for (const a of rows) {
      const conflictMarks = a.events.filter((e) => e.event === "conflict");
      a.conflicts.forEach((c, i) => {
        if (c.by === null || !writeAt.has(c.by) || !conflictMarks[i]) return;
        el("line", { x1: x(conflictMarks[i].t_us), y1: y.get(a.id), x2: writeAt.get(c.by), y2: y.get(c.by),
          class: "conflict-link" }, svg);
      });
    }
    box.dataset.rows = rows.length;
    box.dataset.focus = focus;
  }

  function setFocus(mode) {
    focus = mode;
    for (const button of document.querySelectorAll("[data-focus]")) {
      button.classList.toggle("active", button.dataset.focus === mode);
    }
    render();
  }

  document.addEventListener("click", (event) => {
    const target = event.target.closest("[data-focus], a[data-attempt]");
    if (!target) return;
    event.preventDefault();
    setFocus(target.dataset.focus || "attempt:" + target.dataset.attempt);
    box.scrollIntoView({ behavior: "smooth", block: "nearest" });
  });
  for (const chip of document.querySelectorAll("[data-instance]")) {
    chip.style.borderLeftColor = instanceColour.get(chip.dataset.instance) || "#999";
  }
  window.addEventListener("resize", render);
  const fromHash = /^#attempt-(\d+)$/.exec(window.location.hash);
  setFocus(fromHash ? "attempt:" + fromHash[1] : "story");
})();
