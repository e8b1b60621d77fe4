"""`manage.py attack`: the report, the table and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from ledger.attack.report import REPORT_KEYS
from strategies import registry

REQUIRED_KEYS = {
    "strategy", "requests", "succeeded", "insufficient_funds", "conflict", "lock_timeout", "error", "tps",
    "p50_ms", "p99_ms", "initial_balance", "expected_balance", "actual_balance", "balance_loss",
}  # fmt: skip


def attack_json(*args: str) -> list[dict]:
    out = StringIO()
    call_command("attack", *args, "--json", stdout=out)
    return json.loads(out.getvalue())["runs"]


@pytest.mark.django_db(transaction=True)
def test_json_report_has_the_documented_keys_and_consistent_values():
    [run] = attack_json("--mode", "atomic", "--requests", "40", "--concurrency", "4", "--balance", "1000")
    assert set(run) >= REQUIRED_KEYS | set(REPORT_KEYS)
    assert run["strategy"] == "atomic"
    assert run["requests"] == 40
    assert (run["succeeded"], run["insufficient_funds"]) == (10, 30)
    assert run["initial_balance"] - 100 * run["succeeded"] == run["expected_balance"] == run["actual_balance"]
    assert run["balance_loss"] == 0
    assert isinstance(run["tps"], float) and run["p50_ms"] <= run["p99_ms"]


@pytest.mark.django_db(transaction=True)
def test_default_attack_shows_loss_for_no_lock_and_none_for_the_others():
    """The product's headline: `attack --mode all` with no other flags."""
    runs = {run["strategy"]: run for run in attack_json()}
    assert list(runs) == registry.names()
    assert runs["no-lock"]["balance_loss"] != 0
    for name, run in runs.items():
        if name != "no-lock":
            assert run["balance_loss"] == 0, name
        assert run["requests"] == 400


@pytest.mark.django_db(transaction=True)
def test_mutex_across_processes_loses_in_the_attack_report():
    [run] = attack_json("--mode", "mutex", "--processes", "2", "--concurrency", "8", "--think-ms", "2")
    assert run["balance_loss"] != 0


@pytest.mark.django_db(transaction=True)
def test_table_shows_every_strategy_and_the_loss_row():
    out = StringIO()
    call_command("attack", "--mode", "pessimistic", "--requests", "20", "--concurrency", "2", stdout=out)
    table = out.getvalue()
    assert "pessimistic" in table and "balance loss" in table and "TPS" in table
    assert "cache hit rate" not in table  # no reads, no read rows


@pytest.mark.django_db(transaction=True)
def test_read_ratio_reports_reads_hit_rate_and_stale_reads():
    [run] = attack_json("--mode", "atomic", "--requests", "40", "--concurrency", "4", "--read-ratio", "0.5")
    assert (run["reads"], run["succeeded"], run["stale_reads"]) == (20, 20, 0)
    assert 0 < run["cache_hit_rate"] <= 1
    out = StringIO()
    call_command(
        "attack", "--mode", "atomic", "--requests", "20", "--concurrency", "2", "--read-ratio", "0.9", stdout=out
    )
    table = " ".join(out.getvalue().split())  # the title wraps over a single strategy's narrow table
    assert "90% balance reads" in table
    assert all(row in table for row in ("reads", "cache hit rate", "stale reads", "read p99 ms"))


def run_manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"},
    )


@pytest.mark.django_db(transaction=True)
def test_accounts_spreads_the_attack_and_says_so():
    (run,) = attack_json("--mode", "optimistic", "--requests", "40", "--concurrency", "4", "--accounts", "4")
    assert run["parameters"]["accounts"] == 4 and run["account_id"] is None
    assert run["initial_balance"] == 4 * 30_000 and run["balance_loss"] == 0
    out = StringIO()
    call_command("attack", "--mode", "atomic", "--requests", "8", "--concurrency", "2", "--accounts", "2", stdout=out)
    assert "spread over 2 accounts" in " ".join(out.getvalue().split())  # the title wraps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "yolo"], "--mode: unknown strategy 'yolo'; valid names: mutex, no-lock"),
        (["--amount", "0"], "--amount: must be greater than zero"),
        (["--amount", "-5"], "--amount: must be greater than zero"),
        (["--amount", "1.5"], "invalid int value: '1.5'"),
        (["--requests", "many"], "invalid int value: 'many'"),
        (["--processes", "8", "--concurrency", "2"], "--processes: must be an integer from 1 to 2"),
        (["--mode", "all", "--account", "1"], "--account: cannot be combined with --mode all"),
        (["--read-ratio", "2"], "--read-ratio: must be a number from 0 to 1"),
        (["--read-ratio", "half"], "invalid float value: 'half'"),
        (["--accounts", "0"], "--accounts: must be an integer from 1 to 1000"),
        (["--mode", "atomic", "--account", "1", "--accounts", "2"], "--accounts: cannot be combined with an"),
    ],
)
def test_bad_input_gives_one_readable_line_and_a_non_zero_exit(args, message):
    result = run_manage("attack", *args)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
