"""bench/report.py: rows, ratios, targets and the rendered tables, on hand-made figures."""

from __future__ import annotations

from types import SimpleNamespace

from bench import report
from bench.report import CEILING, HELLO, HOT, HTTP_NGINX, HTTP_ONE, PROCESSES, READ_HEAVY, SPREAD, THREADS

CORRECT = ["atomic", "optimistic", "pessimistic", "redis-lock"]


def run(tps: float, *, loss: int = 0, requests: int = 100, succeeded: int = 100, reads: int = 0, **more):
    figures = dict.fromkeys(report.RUN_KEYS)
    figures.update(tps=tps, balance_loss=loss, requests=requests, succeeded=succeeded, reads=reads, p99_ms=9.0, **more)
    return SimpleNamespace(pk=7, **figures)


def line(workload: str, topology: str, strategy: str, tps: float | None, **more) -> dict:
    if tps is None:
        return report.row(workload=workload, topology=topology, strategy=strategy, missing="not measured here")
    return report.row(workload=workload, topology=topology, strategy=strategy, run=run(tps, **more))


def passing_rows() -> list[dict]:
    rows = [
        line(HOT, CEILING, "atomic", 1000.0),
        line(HOT, THREADS, "atomic", 700.0),
        line(HOT, CEILING, "pessimistic", 1000.0),
        line(HOT, THREADS, "pessimistic", 600.0),
        line(HOT, CEILING, "optimistic", 500.0),
        line(HOT, THREADS, "optimistic", 400.0),
        line(HOT, THREADS, "redis-lock", 300.0, lock_wait_p99_ms=42.0),
        line(HOT, HTTP_ONE, HELLO, 800.0),
        line(HOT, HTTP_ONE, "atomic", 400.0),
        line(HOT, THREADS, "no-lock", 900.0, loss=-300),
        line(HOT, PROCESSES, "no-lock", 900.0, loss=-200),
        line(HOT, PROCESSES, "mutex", 800.0, loss=-100),
        line(HOT, THREADS, "mutex", 800.0, loss=0),  # one process: mutex is correct there
    ]
    return report.attach_ratios(rows)


def by_name(targets: list[dict]) -> dict[str, dict]:
    return {target["target"]: target for target in targets}


def test_success_rate_counts_deductions_only():
    mixed = report.row(workload=READ_HEAVY, topology=THREADS, strategy="atomic",
                       run=run(100.0, requests=100, reads=90, succeeded=9))  # fmt: skip
    assert mixed["success_rate"] == 0.9
    assert (
        report.row(workload=HOT, topology=THREADS, strategy="x", run=run(1.0, requests=0, succeeded=0))["success_rate"]
        is None
    )


def test_ratios_are_taken_to_the_ceiling_of_the_same_strategy_and_workload_and_to_hello():
    rows = report.attach_ratios(
        [
            line(HOT, CEILING, "atomic", 1000.0),
            line(SPREAD, CEILING, "atomic", 2000.0),
            line(HOT, THREADS, "atomic", 600.0),
            line(SPREAD, PROCESSES, "atomic", 500.0),
            line(HOT, HTTP_ONE, HELLO, 800.0),
            line(HOT, HTTP_NGINX, HELLO, 400.0),
            line(READ_HEAVY, HTTP_NGINX, "atomic", 100.0),
            line(HOT, THREADS, "pessimistic", 300.0),
        ]
    )
    threads, spread, nginx, lonely = rows[2], rows[3], rows[6], rows[7]
    assert threads["ratio_to_ceiling"] == 0.6 and threads["ceiling_tps"] == 1000.0
    assert spread["ratio_to_ceiling"] == 0.25
    assert nginx["ratio_to_hello"] == 0.25 and nginx["ratio_to_ceiling"] is None  # no read-heavy ceiling
    assert lonely["ratio_to_ceiling"] is None and "ratio_to_hello" not in lonely  # in-process: no hello
    assert "ratio_to_ceiling" not in rows[0]  # a ceiling is not compared with itself


def test_targets_hold_on_passing_figures():
    targets = by_name(report.evaluate_targets(passing_rows(), correct=CORRECT, duration_s=300))
    assert all(target["ok"] is True for target in targets.values()), targets
    assert targets["in-process atomic vs its SQL ceiling"]["measured"] == "70% (700 / 1,000 TPS)"
    assert "lock-wait p99 42.0 ms" in targets["redis-lock vs pessimistic"]["measured"]
    assert targets["HTTP atomic vs the hello view"]["measured"].startswith("50%")


def test_a_target_below_its_threshold_does_not_hold():
    rows = passing_rows()
    rows[1]["tps"] = 590.0  # atomic: 59 % of its ceiling
    targets = by_name(report.evaluate_targets(rows, correct=CORRECT, duration_s=300))
    assert targets["in-process atomic vs its SQL ceiling"]["ok"] is False
    assert targets["in-process pessimistic vs its SQL ceiling"]["ok"] is True


def test_any_balance_loss_of_a_correct_strategy_fails_and_is_named():
    rows = [*passing_rows(), line(SPREAD, HTTP_NGINX, "optimistic", 100.0, loss=-100)]
    target = by_name(report.evaluate_targets(rows, correct=CORRECT, duration_s=300))["correct strategies lose nothing"]
    assert target["ok"] is False
    assert "optimistic spread http-nginx-2: -100" in target["measured"]


def test_unsafe_strategies_must_show_their_loss():
    rows = passing_rows()
    rows[11]["balance_loss"] = 0  # mutex across 2 processes lost nothing this time
    targets = by_name(report.evaluate_targets(rows, correct=CORRECT, duration_s=300))
    assert targets["mutex loses money"]["ok"] is False
    assert targets["no-lock loses money"]["ok"] is True


def test_missing_rows_make_targets_unmeasured_not_passed():
    rows = [line(HOT, CEILING, "atomic", None), line(HOT, THREADS, "atomic", 700.0)]
    targets = by_name(report.evaluate_targets(report.attach_ratios(rows), correct=CORRECT, duration_s=300))
    assert targets["in-process atomic vs its SQL ceiling"]["ok"] is None
    assert "missing" in targets["in-process atomic vs its SQL ceiling"]["measured"]
    assert targets["mutex loses money"]["ok"] is None


def test_the_run_must_stay_within_its_budget():
    targets = by_name(report.evaluate_targets(passing_rows(), correct=CORRECT, duration_s=601))
    assert targets["bounded"]["ok"] is False


def test_missing_rows_show_their_reason_in_the_table_and_the_list():
    rows = report.attach_ratios([line(HOT, CEILING, "atomic", None), line(HOT, THREADS, "atomic", 700.0)])
    table = report.result_table(rows, HOT)
    assert table[0][:3] == ["strategy", "topology", "TPS"]
    assert table[1][2] == "missing: not measured here"
    assert table[2][2] == "700"
    assert report.missing_rows(rows) == [f"atomic · hot · {report.TOPOLOGIES[CEILING]}: not measured here"]


def test_seed_table_puts_the_seeds_figures_beside_ours():
    table = report.seed_table(passing_rows())
    no_lock = table[1]
    assert no_lock[:5] == ["no lock", "5,000", "10", "60 %", "−500"]
    assert no_lock[6:] == ["900", "9.0", "100.0%", "-300"]
    assert table[2][6] == "not measured"  # no-lock through nginx is not in these rows


def test_markdown_has_every_section_and_escapes_table_cells():
    rows = passing_rows()
    rows[0]["missing"] = "a | b"
    text = report.markdown(
        facts={"date": "today", "duration_s": 1.0, "commit": "abc", "cores": 2},
        parameters={"concurrency": 16},
        rows=rows,
        targets=report.evaluate_targets(rows, correct=CORRECT, duration_s=1),
        statements={"atomic": {"succeeded": ["START TRANSACTION", "COMMIT"]}},
        findings="## Findings\n\ntext",
    )
    headings = ["# Benchmarks", "## Machine", "## Targets", "## The seed's table beside ours",
                "## Results: hot account", "## Missing rows", "## What the ceiling replays", "## Findings"]  # fmt: skip
    for heading in headings:
        assert heading in text, heading
    assert "a \\| b" in text
    assert "`START TRANSACTION` → `COMMIT`" in text


def test_a_ceiling_measured_before_and_after_the_app_shows_both_runs():
    ceiling = line(HOT, CEILING, "atomic", 1100.0)
    ceiling["tps_runs"] = [1000.0, 1200.0]
    table = report.result_table(report.attach_ratios([ceiling, line(HOT, THREADS, "atomic", 660.0)]), HOT)
    assert table[1][2] == "1,100 (1,000 and 1,200)"
    assert table[2][3] == "60%"
