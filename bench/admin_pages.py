"""How fast the admin and the visualizers answer on a big attempts table.

    python bench/admin_pages.py --fill 1000000   # bulk-insert synthetic attempts first (once)
    python bench/admin_pages.py                  # time the pages

Writes into the database the environment names (DATABASE_URL, or the embedded SQLite): use
a database of your own, never one you care about. The synthetic attempts look like the
default attack's: 400 per account and run, six strategies, a few instances, a month of
timestamps, every outcome. Prints, per page, the median of a few requests (after one warm-up),
the number of SQL queries and the slowest one.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from ledger.models import Account, AttackRun, DeductionAttempt, Outcome  # noqa: E402
from strategies import registry  # noqa: E402

PER_RUN = 400
INSTANCES = [f"app-{n}:{1000 + n}" for n in range(8)]
# Roughly what `attack --mode all` records: mostly successes, a quarter refused, rare failures.
OUTCOMES = [Outcome.SUCCEEDED] * 70 + [Outcome.INSUFFICIENT_FUNDS] * 25 + [Outcome.CONFLICT] * 4 + [Outcome.ERROR]


def fill(rows: int) -> None:
    rng = random.Random(7)
    names = registry.names()
    start = timezone.now() - timedelta(days=30)
    step = timedelta(days=30) / rows
    existing = DeductionAttempt.objects.count()
    batch: list[DeductionAttempt] = []
    began = time.perf_counter()
    for first in range(0, rows, PER_RUN):
        strategy = names[(first // PER_RUN) % len(names)]
        moment = start + step * first
        account = Account.objects.create(name=f"bench-{existing + first}", balance=0, opening_balance=30_000)
        run = AttackRun.objects.create(
            strategy=strategy, account=account, started_at=moment, finished_at=moment, requests=PER_RUN,
            status=AttackRun.Status.FINISHED, initial_balance=30_000, expected_balance=0, actual_balance=0,
            balance_loss=0, tps=500.0, p50_ms=1.0, p99_ms=20.0,
        )  # fmt: skip
        for n in range(min(PER_RUN, rows - first)):
            outcome = rng.choice(OUTCOMES)
            at = moment + step * n
            succeeded = outcome == Outcome.SUCCEEDED
            batch.append(
                DeductionAttempt(
                    account_id=account.pk, attack_run_id=run.pk, strategy=strategy, amount=100, outcome=outcome,
                    balance_before=30_000 - 100 * n, balance_after=30_000 - 100 * (n + 1) if succeeded else None,
                    version_before=n, version_after=n + 1 if succeeded else None, retries=rng.choice([0, 0, 0, 1, 3]),
                    lock_wait_us=rng.randint(0, 50_000), duration_us=rng.randint(500, 80_000), started_at=at,
                    read_at=at, written_at=at if succeeded else None, finished_at=at + timedelta(milliseconds=5),
                    events=[{"t_us": 10, "event": "read", "version": n, "balance": 30_000 - 100 * n}],
                    instance_id=rng.choice(INSTANCES), request_id=f"bench-{existing + first + n}",
                    idempotency_key=f"key-{existing + first + n}" if n % 10 == 0 else None,
                )
            )  # fmt: skip
        if len(batch) >= 20_000:
            DeductionAttempt.objects.bulk_create(batch, batch_size=2_000)
            batch.clear()
            done = first + PER_RUN
            print(f"\r{done:,} rows, {done / (time.perf_counter() - began):,.0f} rows/s", end="", flush=True)
    DeductionAttempt.objects.bulk_create(batch, batch_size=2_000)
    print(f"\rinserted {rows:,} attempts in {time.perf_counter() - began:,.0f} s" + " " * 20)


def pages() -> list[tuple[str, str]]:
    attempt = DeductionAttempt.objects.order_by("-pk").first()
    run = attempt.attack_run_id
    day = timezone.localtime(attempt.started_at)
    one_day = f"started_at__year={day.year}&started_at__month={day.month}&started_at__day={day.day}"
    rare = DeductionAttempt.objects.filter(outcome=Outcome.ERROR).order_by("pk").values_list("pk", flat=True).first()
    return [
        ("attempts: list", "/admin/ledger/deductionattempt/"),
        ("attempts: page 150", "/admin/ledger/deductionattempt/?p=150"),
        ("attempts: by strategy", "/admin/ledger/deductionattempt/?strategy=no-lock"),
        ("attempts: by rare outcome", "/admin/ledger/deductionattempt/?outcome__exact=error"),
        ("attempts: by instance", f"/admin/ledger/deductionattempt/?instance={INSTANCES[3]}"),
        ("attempts: by run", f"/admin/ledger/deductionattempt/?run={run}"),
        ("attempts: by account", f"/admin/ledger/deductionattempt/?account={attempt.account_id}"),
        ("attempts: search request id", f"/admin/ledger/deductionattempt/?q={attempt.request_id}"),
        ("attempts: one day", f"/admin/ledger/deductionattempt/?{one_day}"),
        ("attempt: detail", f"/admin/ledger/deductionattempt/{rare or attempt.pk}/change/"),
        ("accounts: list", "/admin/ledger/account/"),
        ("account: detail", f"/admin/ledger/account/{attempt.account_id}/change/"),
        ("runs: list", "/admin/ledger/attackrun/"),
        ("admin index", "/admin/"),
        ("live panel JSON", "/live/status/"),
        ("run timeline", f"/visualize/runs/{run}/"),
        ("account timeline", f"/visualize/accounts/{attempt.account_id}/"),
        ("compare 6 runs", f"/visualize/compare/?runs={','.join(str(run - n) for n in range(6))}"),
    ]


def measure(repeat: int) -> None:
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "", None)
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    total = DeductionAttempt.objects.count()
    print(f"{connection.vendor}: {total:,} attempts, {Account.objects.count():,} accounts, "
          f"{AttackRun.objects.count():,} runs; median of {repeat} requests after a warm-up")  # fmt: skip
    print(f"{'page':<30} {'median ms':>10} {'queries':>8}  slowest query")
    for label, url in pages():
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        timings = []
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as queries:
                began = time.perf_counter()
                client.get(url)
                timings.append((time.perf_counter() - began) * 1000)
        slowest = max(queries.captured_queries, key=lambda q: float(q["time"]))
        print(f"{label:<30} {statistics.median(timings):>10.1f} {len(queries.captured_queries):>8}  "
              f"{float(slowest['time']) * 1000:.1f} ms: {slowest['sql'][:90]}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fill", type=int, default=0, help="Bulk-insert this many synthetic attempts first.")
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    if options.fill:
        fill(options.fill)
    measure(options.repeat)


if __name__ == "__main__":
    main()
