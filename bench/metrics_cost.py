"""What the Prometheus instrumentation costs on the deduction hot path (README "Observability").

    python bench/metrics_cost.py parts                 # µs of CPU of each instrumented part, alone
    python bench/metrics_cost.py deduct --strategy atomic -n 400
                                                       # n deductions, nothing else: run it under
                                                       # callgrind for an exact count of the work
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/metrics_cost.py deduct -n 100
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/metrics_cost.py deduct -n 400
    # (instructions of -n 400) − (instructions of -n 100), ÷ 300 = instructions per deduction

Set PROMETHEUS_MULTIPROC_DIR (an empty directory) to measure prometheus_client's multiprocess mode,
as under gunicorn. `deduct` writes into the database the environment names (it opens one account).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from ledger import balance_cache, metrics, services  # noqa: E402
from ledger.models import DeductionAttempt  # noqa: E402
from project.db_backends import cursor_class  # noqa: E402
from strategies.base import DeductionTrace  # noqa: E402


def cpu_us(work, *, calls: int = 20_000, rounds: int = 9) -> float:
    """Least CPU time per call over `rounds` rounds: the least disturbed by other processes."""
    per_call = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            work()
        per_call.append((time.process_time() - started) / calls * 1e6)
    return min(per_call)


class _Cursor:
    """A cursor that does nothing: what remains is the counting wrapper's own cost."""

    def __init__(self, cursor: object = None) -> None:
        pass

    def execute(self, *args, **kwargs) -> None:
        return None


def parts() -> None:
    print(f"prometheus_client mode: {'multiprocess' if metrics.multiprocess() else 'single process'}")
    plain = DeductionAttempt(strategy="atomic", outcome="succeeded", duration_us=800, retries=0)
    waited = DeductionAttempt(strategy="pessimistic", outcome="succeeded", duration_us=800, lock_wait_us=30, retries=0)

    def trace_with_gauge() -> None:
        trace = DeductionTrace(account_id=1, amount=1)
        with trace.waiting_for_lock("mutex") as waited_from:
            pass
        trace.lock_acquired(waited_from)

    def trace_without_gauge() -> None:
        trace = DeductionTrace(account_id=1, amount=1)
        trace.lock_acquired(time.perf_counter())

    counting = cursor_class(_Cursor, "bench", "bench")
    figures = {
        "counting the attempt (counter + duration histogram)": cpu_us(lambda: metrics.observe_deduction(plain)),
        "counting an attempt that waited for its lock": cpu_us(lambda: metrics.observe_deduction(waited)),
        "lock-waiters gauge (+1, −1)": cpu_us(trace_with_gauge) - cpu_us(trace_without_gauge),
        "a balance cache event": cpu_us(lambda: balance_cache.count(balance_cache.CacheEvent.PUBLISHED)),
        "counting and timing one SQL statement": cpu_us(lambda: counting().execute("SELECT 1"))
        - cpu_us(lambda: _Cursor().execute("SELECT 1")),
    }
    for label, value in figures.items():
        print(f"{label:55s} {value:6.1f} µs")


def deduct(strategy: str, count: int) -> None:
    account = services.open_account(name=f"bench-metrics-{os.getpid()}-{time.time_ns()}", balance=10**15)
    for _ in range(30 + count):  # 30 to warm up: the first ones pay for connections and caches
        services.deduct(account_id=account.pk, amount=1, strategy=strategy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("parts")
    run = commands.add_parser("deduct")
    run.add_argument("--strategy", default="atomic")
    run.add_argument("-n", type=int, default=400)
    options = parser.parse_args()
    if options.command == "parts":
        parts()
    else:
        deduct(options.strategy, options.n)
