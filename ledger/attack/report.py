"""An AttackRun as the JSON report and as the rows of the comparison table."""

from __future__ import annotations

from ledger.models import AttackRun

# Keys of each run in `attack --json` ({"runs": [...]}); the order is the table's order.
REPORT_KEYS = [
    "strategy",
    "requests",
    "succeeded",
    "insufficient_funds",
    "conflict",
    "lock_timeout",
    "error",
    "rate_limited",
    "unavailable",
    "tps",
    "p50_ms",
    "p99_ms",
    "retries",
    "lock_wait_p99_ms",
    "initial_balance",
    "expected_balance",
    "actual_balance",
    "balance_loss",
    "reads",
    "cache_hit_rate",
    "stale_reads",
    "read_p50_ms",
    "read_p99_ms",
]

# Rows of the terminal table: (label, report key). HTTP_ONLY rows are shown for HTTP runs,
# READS_ONLY rows for runs with balance reads (--read-ratio).
HTTP_ONLY = {"rate_limited", "unavailable"}
READS_ONLY = {"reads", "cache_hit_rate", "stale_reads", "read_p50_ms", "read_p99_ms"}
TABLE_ROWS = [
    ("requests", "requests"),
    ("succeeded", "succeeded"),
    ("insufficient", "insufficient_funds"),
    ("conflict", "conflict"),
    ("lock_timeout", "lock_timeout"),
    ("error", "error"),
    ("rate limited (429)", "rate_limited"),
    ("unavailable (503)", "unavailable"),
    ("TPS", "tps"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("retries", "retries"),
    ("lock-wait p99 ms", "lock_wait_p99_ms"),
    ("expected balance", "expected_balance"),
    ("actual balance", "actual_balance"),
    ("balance loss", "balance_loss"),
    ("reads", "reads"),
    ("cache hit rate", "cache_hit_rate"),
    ("stale reads", "stale_reads"),
    ("read p50 ms", "read_p50_ms"),
    ("read p99 ms", "read_p99_ms"),
]


def run_report(run: AttackRun) -> dict:
    report = {key: getattr(run, key) for key in REPORT_KEYS}
    report.update(
        run_id=run.pk,
        account_id=run.account_id,
        target=run.target,
        parameters=run.parameters,
        status=run.status,
        started_at=run.started_at.isoformat(),
        finished_at=run.finished_at.isoformat() if run.finished_at else None,
    )
    return report


def table_rows(reports: list[dict]) -> list[tuple[str, str]]:
    over_http = any(report["target"] != AttackRun.IN_PROCESS for report in reports)
    with_reads = any(report["reads"] for report in reports)
    return [
        (label, key)
        for label, key in TABLE_ROWS
        if (over_http or key not in HTTP_ONLY) and (with_reads or key not in READS_ONLY)
    ]


def format_value(key: str, value: object) -> str:
    if value is None:
        return "–"
    if key == "cache_hit_rate":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.0f}" if key == "tps" else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
