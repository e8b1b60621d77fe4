"""Rows, ratios and targets of a bench run, and BENCHMARKS.md / the JSON file written from them.

Pure functions over plain dicts (no database, no clock), so the arithmetic is tested on its own
(tests/bench/test_report.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.attack.report import format_value

# Workloads (README "Benchmarks").
HOT, SPREAD, READ_HEAVY = "hot", "spread", "read-heavy"
WORKLOADS = {
    HOT: "hot account: every request deducts from one account",
    SPREAD: "spread: each request deducts from one of 100 accounts, picked at random",
    READ_HEAVY: "read-heavy: one account, 90 % balance reads (cached), 10 % deductions",
}
# Topologies, in the order they are shown.
CEILING, THREADS, PROCESSES, HTTP_ONE, HTTP_NGINX = "ceiling", "threads", "processes", "http-1", "http-nginx-2"
TOPOLOGIES = {
    CEILING: "raw SQL ceiling (mysqlclient, no Django; 16 threads; before and after the app)",
    THREADS: "in-process, 16 threads",
    PROCESSES: "in-process, 2 processes × 8 threads",
    HTTP_ONE: "HTTP, one gunicorn instance directly",
    HTTP_NGINX: "HTTP, nginx + 2 gunicorn instances",
}
HTTP_TOPOLOGIES = (HTTP_ONE, HTTP_NGINX)
CROSS_PROCESS = (PROCESSES, HTTP_ONE, HTTP_NGINX)  # a gunicorn instance has 2 worker processes
HELLO = "hello"  # the bare JSON view: the HTTP ceiling of its topology

# The seed document's comparison table (Go, unknown hardware), next to which ours is shown.
SEED = [
    {"seed": "no lock", "strategy": "no-lock", "tps": 5000, "p99_ms": 10, "success": "60 %", "loss": "−500"},
    {"seed": "single-machine lock", "strategy": "mutex", "tps": 1000, "p99_ms": 50, "success": "100 %", "loss": "0"},
    {"seed": "Redis lock", "strategy": "redis-lock", "tps": 800, "p99_ms": 80, "success": "100 %", "loss": "0"},
    {"seed": "optimistic", "strategy": "optimistic", "tps": 2000, "p99_ms": 30, "success": "95 %", "loss": "0"},
]

RUN_KEYS = [
    "requests", "succeeded", "insufficient_funds", "conflict", "lock_timeout", "error", "rate_limited",
    "unavailable", "tps", "p50_ms", "p99_ms", "retries", "lock_wait_p99_ms", "balance_loss", "reads",
    "cache_hit_rate", "stale_reads", "read_p50_ms", "read_p99_ms",
]  # fmt: skip


def row(*, workload: str, topology: str, strategy: str, run=None, missing: str | None = None, **extra) -> dict:
    """One line of the results: the run's figures (an AttackRun, saved or not), or why there are none."""
    figures = {key: getattr(run, key, None) if run is not None else None for key in RUN_KEYS}
    if run is not None:
        deductions = (run.requests or 0) - (run.reads or 0)
        figures["success_rate"] = run.succeeded / deductions if deductions else None
        figures["run_id"] = run.pk
    return {"workload": workload, "topology": topology, "strategy": strategy, **figures, "missing": missing, **extra}


def _find(rows: Iterable[dict], **match) -> dict | None:
    for candidate in rows:
        if all(candidate.get(key) == value for key, value in match.items()) and candidate.get("tps"):
            return candidate
    return None


def attach_ratios(rows: list[dict]) -> list[dict]:
    """Give every measured row its ratio to the SQL ceiling of its strategy and workload, and every
    HTTP row its ratio to the hello view through the same topology."""
    for line in rows:
        if line["topology"] == CEILING or line["strategy"] == HELLO or not line.get("tps"):
            continue
        ceiling = _find(rows, topology=CEILING, workload=line["workload"], strategy=line["strategy"])
        line["ceiling_tps"] = ceiling["tps"] if ceiling else None
        line["ratio_to_ceiling"] = line["tps"] / ceiling["tps"] if ceiling else None
        if line["topology"] in HTTP_TOPOLOGIES:
            hello = _find(rows, topology=line["topology"], strategy=HELLO)
            line["hello_tps"] = hello["tps"] if hello else None
            line["ratio_to_hello"] = line["tps"] / hello["tps"] if hello else None
    return rows


def _target(name: str, required: str, measured: str, ok: bool | None) -> dict:
    return {"target": name, "required": required, "measured": measured, "ok": ok}


def _ratio_target(name: str, required: str, numerator: dict | None, denominator: dict | None, minimum: float) -> dict:
    if numerator is None or denominator is None:
        absent = "the measured row" if numerator is None else "the row it is compared with"
        return _target(name, required, f"not measured: {absent} is missing (see Missing rows)", None)
    ratio = numerator["tps"] / denominator["tps"]
    measured = f"{ratio:.0%} ({numerator['tps']:,.0f} / {denominator['tps']:,.0f} TPS)"
    return _target(name, required, measured, ratio >= minimum)


def evaluate_targets(
    rows: list[dict], *, correct: Iterable[str], duration_s: float, budget_s: float = 600
) -> list[dict]:
    """The issue's targets, each with what was measured and whether it holds (None: not measurable)."""
    targets = []
    for strategy in ("atomic", "pessimistic", "optimistic"):
        targets.append(
            _ratio_target(
                f"in-process {strategy} vs its SQL ceiling",
                "≥ 60 % (hot account, 16 threads)",
                _find(rows, workload=HOT, topology=THREADS, strategy=strategy),
                _find(rows, workload=HOT, topology=CEILING, strategy=strategy),
                0.60,
            )
        )
    redis_lock = _find(rows, workload=HOT, topology=THREADS, strategy="redis-lock")
    lock_target = _ratio_target(
        "redis-lock vs pessimistic",
        "≥ 50 % of pessimistic TPS (hot account, 16 threads)",
        redis_lock,
        _find(rows, workload=HOT, topology=THREADS, strategy="pessimistic"),
        0.50,
    )
    if redis_lock and redis_lock.get("lock_wait_p99_ms") is not None:
        lock_target["measured"] += f"; lock-wait p99 {redis_lock['lock_wait_p99_ms']:.1f} ms"
    targets.append(lock_target)
    targets.append(
        _ratio_target(
            "HTTP atomic vs the hello view",
            "≥ 50 % (one gunicorn instance, hot account)",
            _find(rows, workload=HOT, topology=HTTP_ONE, strategy="atomic"),
            _find(rows, topology=HTTP_ONE, strategy=HELLO),
            0.50,
        )
    )

    correct = set(correct)
    checked = [r for r in rows if r["strategy"] in correct and r.get("balance_loss") is not None]
    losing = [r for r in checked if r["balance_loss"] != 0]
    targets.append(
        _target(
            "correct strategies lose nothing",
            "balance loss exactly 0 in every row",
            f"{len(checked) - len(losing)} of {len(checked)} rows at 0"
            + "".join(f"; {r['strategy']} {r['workload']} {r['topology']}: {r['balance_loss']:,}" for r in losing),
            not losing if checked else None,
        )
    )
    for strategy, topologies, where in (
        ("no-lock", (THREADS, PROCESSES, *HTTP_TOPOLOGIES), "every hot-account row"),
        ("mutex", CROSS_PROCESS, "every hot-account row with several processes"),
    ):
        shown = [r for r in rows if r["strategy"] == strategy and r["workload"] == HOT and r["topology"] in topologies]
        shown = [r for r in shown if r.get("balance_loss") is not None]
        measured = ", ".join(f"{TOPOLOGIES[r['topology']]}: {r['balance_loss']:,}" for r in shown) or "no row"
        holds = all(r["balance_loss"] != 0 for r in shown) if shown else None
        targets.append(_target(f"{strategy} loses money", f"non-zero balance loss in {where}", measured, holds))
    bound = f"the whole run under {budget_s / 60:.0f} minutes"
    targets.append(_target("bounded", bound, f"{duration_s:.0f} s", duration_s < budget_s))
    return targets


# Rendering.


def fmt(value: object, kind: str = "") -> str:
    """A figure as the attack table shows it (`kind` "tps": whole numbers); "ratio" and "rate" as %."""
    if value is not None and kind == "ratio":
        return f"{value:.0%}"
    return format_value("cache_hit_rate" if kind == "rate" else kind, value)


RESULT_COLUMNS = [
    ("strategy", "strategy", ""),
    ("topology", "topology", ""),
    ("TPS", "tps", "tps"),
    ("÷ SQL ceiling", "ratio_to_ceiling", "ratio"),
    ("÷ hello", "ratio_to_hello", "ratio"),
    ("p50 ms", "p50_ms", ""),
    ("p99 ms", "p99_ms", ""),
    ("success", "success_rate", "rate"),
    ("balance loss", "balance_loss", ""),
    ("retries", "retries", ""),
    ("lock-wait p99 ms", "lock_wait_p99_ms", ""),
    ("errors", "error", ""),
    ("429", "rate_limited", ""),
]
READ_COLUMNS = [("reads", "reads", ""), ("cache hits", "cache_hit_rate", "rate"), ("stale reads", "stale_reads", "")]


def result_table(rows: list[dict], workload: str) -> list[list[str]]:
    """The workload's rows as table cells (header first); missing rows say why in their figures' place."""
    columns = RESULT_COLUMNS + (READ_COLUMNS if workload == READ_HEAVY else [])
    lines = [[title for title, _, _ in columns]]
    for line in rows:
        if line["workload"] != workload and not (line["strategy"] == HELLO and workload == HOT):
            continue
        cells = [fmt(line.get(key), kind) for _, key, kind in columns]
        cells[1] = TOPOLOGIES[line["topology"]]
        if len(line.get("tps_runs") or ()) > 1:  # a ceiling measured before and after the app: their mean
            cells[2] += " (" + " and ".join(fmt(tps, "tps") for tps in line["tps_runs"]) + ")"
        if line.get("missing"):
            cells[2:] = [f"missing: {line['missing']}"] + [""] * (len(cells) - 3)
        lines.append(cells)
    return lines


def markdown_table(lines: list[list[str]]) -> str:
    header, *body = lines
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in body]
    return "\n".join(out)


def seed_table(rows: list[dict]) -> list[list[str]]:
    """The seed's figures next to ours (hot account: in-process threads, and HTTP through nginx)."""
    lines = [["seed's row", "seed TPS", "seed p99 ms", "seed success", "seed loss", "ours", "TPS", "p99 ms",
              "success", "balance loss"]]  # fmt: skip
    for seed in SEED:
        for topology in (THREADS, HTTP_NGINX):
            ours = _find(rows, workload=HOT, topology=topology, strategy=seed["strategy"])
            lines.append(
                [seed["seed"], fmt(seed["tps"]), fmt(seed["p99_ms"]), seed["success"], seed["loss"],
                 f"{seed['strategy']} · {TOPOLOGIES[topology]}",
                 *([fmt(ours["tps"], "tps"), fmt(ours["p99_ms"]), fmt(ours["success_rate"], "rate"),
                    fmt(ours["balance_loss"])] if ours else ["not measured", "", "", ""])]
            )  # fmt: skip
    return lines


def targets_table(targets: list[dict]) -> list[list[str]]:
    verdict = {True: "holds", False: "**does not hold**", None: "not measured"}
    return [["target", "required", "measured", "verdict"]] + [
        [t["target"], t["required"], t["measured"], verdict[t["ok"]]] for t in targets
    ]


def missing_rows(rows: list[dict]) -> list[str]:
    return [
        f"{r['strategy']} · {r['workload']} · {TOPOLOGIES[r['topology']]}: {r['missing']}" for r in rows if r["missing"]
    ]


def markdown(
    *, facts: dict, parameters: dict, rows: list[dict], targets: list[dict], statements: dict, findings: str
) -> str:
    parts = [
        "# Benchmarks",
        "",
        f"Written by `make bench` ({facts['date']}, {facts['duration_s']:.0f} s, commit `{facts['commit']}`)."
        " Every figure below comes from that one run: the ceilings and the app were measured the same"
        " minutes on the same machine, so the ratios are side by side. Raw figures: `BENCHMARKS.json`.",
        "",
        "## Machine",
        "",
        markdown_table([["", ""]] + [[key, str(value)] for key, value in facts.items()]),
        "",
        "## Parameters",
        "",
        markdown_table([["", ""]] + [[key, str(value)] for key, value in parameters.items()]),
        "",
        "## Targets",
        "",
        markdown_table(targets_table(targets)),
        "",
        "## The seed's table beside ours",
        "",
        "The seed's figures come from its own load test (Go, unknown hardware), not from this machine;"
        " ours are the hot-account rows of this run.",
        "",
        markdown_table(seed_table(rows)),
    ]
    for workload, title in WORKLOADS.items():
        parts += ["", f"## Results: {title}", "", markdown_table(result_table(rows, workload))]
    absent = missing_rows(rows)
    parts += ["", "## Missing rows", ""]
    parts += [f"- {line}" for line in absent] if absent else ["None: every row was measured."]
    parts += ["", "## What the ceiling replays", ""]
    parts += [
        "Captured from Django (`bench/ceiling.py`), per strategy and path; the replay was checked to"
        " send the same statements with the same parameters before it was measured.",
        "",
    ]
    for strategy, paths in statements.items():
        for path, steps in paths.items():
            parts.append(f"- `{strategy}`, {path}: " + " → ".join(f"`{step}`" for step in steps))
    parts += ["", findings.strip(), ""]
    return "\n".join(parts)
