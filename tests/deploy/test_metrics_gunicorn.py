"""/metrics of one gunicorn instance with two worker processes (gunicorn.conf.py, prometheus_client's
multiprocess mode, production settings): the scraped totals are the sum over both workers and equal
the attempts the database recorded; the lock-waiters gauge follows a wait in another process; a dead
worker's counts survive it; without the token the metrics are refused.

Which worker accepts a connection is the kernel's choice: to make both serve, each half of the attack
runs while the other worker is stopped (SIGSTOP), so it cannot accept.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Sum

from deploy import cluster
from ledger.api.tokens import ensure_token
from ledger.models import Account, DeductionAttempt, Outcome
from strategies import redis_lock, registry
from tests.deploy.conftest import scrape
from tests.support import Exposition, wait_for
from tests.support import sample_value as value

TOKEN = "metrics-test-token"
ATTACK = ["--requests", "30", "--concurrency", "4", "--balance", "2000", "--think-ms", "2", "--json"]


class Instance:
    def __init__(self, process: subprocess.Popen, url: str, env: dict, metrics_dir: Path) -> None:
        self.process, self.url, self.env, self.metrics_dir = process, url, env, metrics_dir

    def workers(self) -> list[int]:
        """The master's live children: its worker processes."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                found.append(int(entry.name))
        return sorted(found)

    def scrape(self) -> Exposition:
        return scrape(self.url, token=TOKEN)

    def attack(self, api_token: str) -> list[dict]:
        command = [sys.executable, "manage.py", "attack", "--url", self.url, "--token", api_token, "--mode", "all"]
        env = {name: value for name, value in self.env.items() if name != "PROMETHEUS_MULTIPROC_DIR"}  # not a worker
        result = subprocess.run(
            [*command, *ATTACK], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout)["runs"]


@pytest.fixture
def instance(transactional_db, tmp_path):
    """gunicorn with gunicorn.conf.py: 2 workers × 4 threads, production settings (DEBUG off, a
    metrics token), on the test database and the test Redis db. Logs in tmp_path/gunicorn.log."""
    metrics_dir = tmp_path / "prometheus"
    env = {
        **os.environ,
        "DEBUG": "false",
        "REDIS_URL": settings.REDIS_URL,
        # The test database (its name exists only at run time), as the admin's attack launcher does.
        "ATTACK_DATABASE_NAME": str(connection.settings_dict["NAME"]),
        "GUNICORN_BIND": "127.0.0.1:0",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "4",
        "GUNICORN_TIMEOUT": "120",  # a stopped worker must not be killed for missing heartbeats
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TOKEN": TOKEN,
    }
    env.pop("INSTANCE_ID", None)  # each worker is then hostname:pid: the attempts tell who served
    log = tmp_path / "gunicorn.log"
    (metrics_dir / "stale").mkdir(parents=True)  # a previous run's leftovers: on_starting empties it
    command = [sys.executable, "-m", "gunicorn", "--config", str(cluster.GUNICORN_CONF), "project.wsgi:application"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Listening at: " in log.read_text() or process.poll() is not None, timeout=60)
        assert process.poll() is None, log.read_text()
        url = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text())[1]
        server = Instance(process, url, env, metrics_dir)
        wait_for(lambda: len(server.workers()) == 2 and log.read_text().count("Booting worker") >= 2, timeout=60)
        wait_for(lambda: _healthy(url), timeout=60)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_metrics_are_refused_without_the_token_in_production_settings(instance):
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        request = urllib.request.Request(f"{instance.url}/metrics", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401
        assert b"ledger_" not in refused.value.read()
    assert "ledger_deductions_total" in instance.scrape()


def test_scraped_counters_of_two_workers_equal_the_recorded_attempts(instance):
    first, second = instance.workers()
    api_token = ensure_token(username="metrics-attacker")
    runs = []
    for stopped in (second, first):  # the other one serves that half alone
        os.kill(stopped, signal.SIGSTOP)
        try:
            runs += instance.attack(api_token)
        finally:
            os.kill(stopped, signal.SIGCONT)
    assert {run["error"] + run["rate_limited"] + run["unavailable"] for run in runs} == {0}

    attempts = DeductionAttempt.objects.all()
    served_by = set(attempts.values_list("instance_id", flat=True))
    assert {name.rsplit(":", 1)[1] for name in served_by} == {str(first), str(second)}
    assert {path.name for path in instance.metrics_dir.glob("counter_*.db")} >= {
        f"counter_{first}.db",
        f"counter_{second}.db",
    }
    scraped = instance.scrape()
    _assert_metrics_match(scraped, attempts)

    # A worker that dies takes nothing with it: its files stay and are still summed.
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(instance.workers()) == 2 and first not in instance.workers(), timeout=60)
    wait_for(lambda: _healthy(instance.url), timeout=60)
    _assert_metrics_match(instance.scrape(), attempts)


def _assert_metrics_match(scraped: dict, attempts) -> None:
    grouped = attempts.order_by().values_list("strategy", "outcome").annotate(n=Count("id"))
    recorded = Counter({(strategy, outcome): n for strategy, outcome, n in grouped})
    assert sum(recorded.values()) == 2 * 30 * len(registry.names())
    for name in registry.names():
        for outcome in Outcome.values:
            labels = {"strategy": name, "outcome": outcome}
            assert value(scraped, "ledger_deductions_total", **labels) == recorded[name, outcome], labels
            assert value(scraped, "ledger_deduction_duration_seconds_count", **labels) == recorded[name, outcome]
        mine = attempts.filter(strategy=name)
        assert value(scraped, "ledger_deduction_duration_seconds_sum", strategy=name, outcome="succeeded") > 0
        waited = mine.filter(lock_wait_us__isnull=False).count()
        assert value(scraped, "ledger_lock_wait_seconds_count", strategy=name) == waited
        retries = mine.aggregate(total=Sum("retries"))["total"] or 0
        assert value(scraped, "ledger_deduction_retries_total", strategy=name) == retries
    assert value(scraped, "ledger_lock_wait_seconds_count", strategy="redis-lock") > 0
    assert sum(value(scraped, "ledger_lock_waiters", strategy=name) for name in registry.names()) == 0
    # The audit behind the balance-loss gauges covers the attacked accounts.
    assert value(scraped, "ledger_audit_accounts") == Account.objects.count()
    assert value(scraped, "ledger_balance_loss_minor_units", strategy="atomic", safe="true") == 0


def test_lock_waiters_rise_while_a_worker_waits_for_a_held_lock_and_fall_after(instance, make_account):
    account = make_account(balance=1_000)
    holder = cache.lock(redis_lock.lock_key(account.pk), timeout=60)
    assert holder.acquire(blocking=False)
    token = ensure_token(username="metrics-waiter")
    answers = []

    def deduct() -> None:
        host, port = instance.url.removeprefix("http://").split(":")
        client = http.client.HTTPConnection(host, int(port), timeout=60)
        body = json.dumps({"amount": 100, "strategy": "redis-lock"})
        headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        client.request("POST", f"/api/accounts/{account.pk}/deductions/", body=body, headers=headers)
        answers.append(client.getresponse().status)
        client.close()

    waiting = lambda: value(instance.scrape(), "ledger_lock_waiters", strategy="redis-lock")  # noqa: E731
    assert waiting() == 0
    request = threading.Thread(target=deduct)
    request.start()
    try:
        wait_for(lambda: waiting() == 1, timeout=30)
    finally:
        holder.release()
        request.join(60)
    assert answers == [201]
    assert waiting() == 0
