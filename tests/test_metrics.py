"""The ledger's Prometheus metrics, in one process: what is counted, once, from the recorded attempts;
the lock-waiters gauge; the balance loss attributed to the strategies that wrote; who may read /metrics.

Across gunicorn workers and instances: tests/deploy/test_metrics_gunicorn.py and test_cluster_attack.py.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Sum
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from ledger import metrics, selectors, services
from ledger.attack.engine import AttackPlan, run_attack
from ledger.models import Account, DeductionAttempt, Outcome
from strategies import mutex, redis_lock, registry
from strategies.base import read_balance
from tests.support import Exposition, parse_exposition, run_concurrently, wait_for

LOCKING = ["mutex", "pessimistic", "redis-lock"]


def value(sample: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(sample, labels) or 0.0


def scrape(client, **headers) -> Exposition:
    """GET /metrics as Prometheus does."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain;")
    return parse_exposition(response.content.decode())


@pytest.mark.django_db(transaction=True)
def test_every_recorded_attempt_is_counted_once_with_its_duration_lock_wait_and_retries():
    names = registry.names()
    series = {
        name: {
            outcome: (value("ledger_deductions_total", strategy=name, outcome=outcome),
                      value("ledger_deduction_duration_seconds_count", strategy=name, outcome=outcome))
            for outcome in Outcome.values
        }
        for name in names
    }  # fmt: skip
    waits = {name: value("ledger_lock_wait_seconds_count", strategy=name) for name in names}
    retries = {name: value("ledger_deduction_retries_total", strategy=name) for name in names}
    first = (DeductionAttempt.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1

    for name in names:  # think time: waits queue, optimistic retries, insufficient funds at the end
        run_attack(AttackPlan(strategy=name, requests=40, concurrency=6, balance=3_000, think_ms=2))

    recorded = DeductionAttempt.objects.filter(pk__gte=first)
    grouped = recorded.order_by().values_list("strategy", "outcome").annotate(n=Count("id"))
    by_outcome = Counter({(strategy, outcome): n for strategy, outcome, n in grouped})
    for name in names:
        for outcome in Outcome.values:
            counted, timed = series[name][outcome]
            assert (
                value("ledger_deductions_total", strategy=name, outcome=outcome) - counted == by_outcome[name, outcome]
            )
            assert (
                value("ledger_deduction_duration_seconds_count", strategy=name, outcome=outcome) - timed
                == by_outcome[name, outcome]
            )
        mine = recorded.filter(strategy=name)
        assert (
            value("ledger_lock_wait_seconds_count", strategy=name) - waits[name]
            == mine.filter(lock_wait_us__isnull=False).count()
        )
        assert value("ledger_deduction_retries_total", strategy=name) - retries[name] == (
            mine.aggregate(total=Sum("retries"))["total"] or 0
        )
    assert sum(by_outcome.values()) == 40 * len(names)
    assert recorded.filter(strategy="optimistic", retries__gt=0).exists()  # the retries were really exercised
    assert all(recorded.filter(strategy=name, lock_wait_us__isnull=False).count() == 40 for name in LOCKING)


@pytest.fixture
def holding(make_account, request):
    """Hold the lock a strategy waits for, from another thread or the test itself, until released."""
    holders = {
        "mutex": lambda account: mutex._lock_for(account.pk),
        "redis-lock": lambda account: cache.lock(redis_lock.lock_key(account.pk), timeout=30),
    }
    account = make_account(balance=1_000)
    release, held = threading.Event(), threading.Event()

    def hold_row_lock() -> None:
        try:
            with transaction.atomic():  # SQLite: BEGIN IMMEDIATE holds the whole database
                read_balance(account.pk, for_update=True)
                held.set()
                release.wait(30)
        finally:
            connection.close()

    name = request.param
    if name in holders:
        lock = holders[name](account)
        assert lock.acquire(blocking=False)
        yield name, account, lock.release
        return
    holder = threading.Thread(target=hold_row_lock)
    holder.start()
    assert held.wait(10)
    yield name, account, release.set
    release.set()
    holder.join(30)


@pytest.mark.parametrize("holding", LOCKING, indirect=True)
@pytest.mark.django_db(transaction=True)
def test_lock_waiters_rise_while_a_lock_is_held_and_fall_when_it_is_granted(holding):
    name, account, release = holding
    waiting = lambda: value("ledger_lock_waiters", strategy=name)  # noqa: E731
    assert waiting() == 0
    attempts = []

    def deduct() -> None:
        try:
            attempts.append(services.deduct(account_id=account.pk, amount=100, strategy=name))
        finally:
            connection.close()

    waiter = threading.Thread(target=deduct)
    waiter.start()
    wait_for(lambda: waiting() == 1)
    release()
    waiter.join(30)
    assert waiting() == 0
    (attempt,) = attempts
    assert attempt.outcome == Outcome.SUCCEEDED and attempt.lock_wait_us > 0


@pytest.mark.django_db
def test_a_lock_that_never_came_leaves_no_waiter_and_no_lock_wait(make_account, settings):
    settings.LEDGER_LOCK_WAIT_S = 0.05
    account = make_account()
    timeouts = value("ledger_deductions_total", strategy="mutex", outcome="lock_timeout")
    waits = value("ledger_lock_wait_seconds_count", strategy="mutex")
    with mutex._lock_for(account.pk):
        attempt = services.deduct(account_id=account.pk, amount=100, strategy="mutex")
    assert attempt.outcome == Outcome.LOCK_TIMEOUT
    assert value("ledger_lock_waiters", strategy="mutex") == 0
    assert value("ledger_deductions_total", strategy="mutex", outcome="lock_timeout") == timeouts + 1
    assert value("ledger_lock_wait_seconds_count", strategy="mutex") == waits


@pytest.mark.django_db
def test_balance_reads_count_cache_misses_and_hits(make_account):
    account = make_account()
    before = {event: value("ledger_balance_cache_events_total", event=event) for event in ("miss", "hit")}
    selectors.balance(account_id=account.pk)
    selectors.balance(account_id=account.pk)
    assert value("ledger_balance_cache_events_total", event="miss") == before["miss"] + 1
    assert value("ledger_balance_cache_events_total", event="hit") == before["hit"] + 1


def lose_money_with_no_lock(account: Account) -> None:
    """A real lost update: two no-lock deductions read the same balance, both write (forced by a barrier)."""
    both_read = threading.Barrier(2)
    run_concurrently(
        2, lambda _: services.deduct(account_id=account.pk, amount=100, strategy="no-lock", after_read=both_read.wait)
    )


@pytest.mark.django_db(transaction=True)
def test_balance_loss_is_attributed_to_the_strategies_that_wrote_to_each_account(make_account):
    lost = make_account(balance=1_000)
    lose_money_with_no_lock(lost)
    mixed = make_account(balance=1_000)
    services.deduct(account_id=mixed.pk, amount=100, strategy="atomic")
    lose_money_with_no_lock(mixed)
    tampered = make_account(balance=1_000)
    Account.objects.filter(pk=tampered.pk).update(balance=900)  # behind the ledger's back
    exact = make_account(balance=1_000)
    services.deduct(account_id=exact.pk, amount=100, strategy="atomic")

    groups = {group.strategy: group for group in services.balance_loss_by_writers(services.audit())}
    assert set(registry.names()) <= set(groups)
    assert groups["no-lock"] == services.LossGroup("no-lock", safe=False, balance_loss=-100, accounts=1)
    assert groups["atomic+no-lock"] == services.LossGroup("atomic+no-lock", safe=False, balance_loss=-100, accounts=1)
    assert groups["none"] == services.LossGroup("none", safe=True, balance_loss=100, accounts=1)
    assert groups["atomic"] == services.LossGroup("atomic", safe=True, balance_loss=0, accounts=0)
    assert {name for name, group in groups.items() if group.safe} == {
        *(s.name for s in registry.all_strategies() if s.safe_across_processes),
        "none",
    }


@pytest.mark.django_db(transaction=True)
def test_metrics_export_the_balance_loss_of_an_audit_that_scrapes_refresh_at_most_once_per_interval(
    client, make_account, settings, django_assert_max_num_queries
):
    settings.METRICS_AUDIT_INTERVAL_S = 3600
    lost = make_account(balance=1_000)
    lose_money_with_no_lock(lost)

    first = scrape(client)
    assert first["ledger_balance_loss_minor_units"][(("safe", "false"), ("strategy", "no-lock"))] == -100
    assert first["ledger_balance_loss_accounts"][(("safe", "false"), ("strategy", "no-lock"))] == 1
    assert first["ledger_balance_loss_minor_units"][(("safe", "true"), ("strategy", "atomic"))] == 0
    assert first["ledger_audit_accounts"][()] == 1
    audited_at = first["ledger_audit_timestamp_seconds"][()]
    assert time.time() - 60 < audited_at <= time.time()

    lose_money_with_no_lock(lost)
    with django_assert_max_num_queries(0):  # within the interval: the stored audit, no new one
        again = scrape(client)
    assert again["ledger_audit_timestamp_seconds"][()] == audited_at
    assert again["ledger_balance_loss_minor_units"][(("safe", "false"), ("strategy", "no-lock"))] == -100

    with pytest.raises(CommandError):
        call_command("audit")  # a full audit publishes at once (and exits 1: no-lock lost money)
    refreshed = scrape(client)
    assert refreshed["ledger_balance_loss_minor_units"][(("safe", "false"), ("strategy", "no-lock"))] == -200
    assert refreshed["ledger_audit_timestamp_seconds"][()] > audited_at


@pytest.mark.django_db(transaction=True)
def test_a_stale_audit_is_served_at_once_while_a_new_one_runs_in_the_background(client, make_account, settings):
    settings.METRICS_AUDIT_INTERVAL_S = 60
    lose_money_with_no_lock(make_account(balance=1_000))
    stale = {"audited_at": time.time() - 3600, "duration_s": 0.1, "accounts": 0, "groups": []}
    cache.set(metrics.AUDIT_KEY, stale, timeout=None)

    answered = scrape(client)  # does not wait for the audit it starts
    assert answered["ledger_audit_timestamp_seconds"][()] == stale["audited_at"]
    # The thread's audit lands in Redis when it is done (the thread may already have ended).
    wait_for(lambda: cache.get(metrics.AUDIT_KEY)["audited_at"] != stale["audited_at"], timeout=30)
    refreshed = scrape(client)
    assert refreshed["ledger_audit_timestamp_seconds"][()] > stale["audited_at"]
    assert refreshed["ledger_balance_loss_minor_units"][(("safe", "false"), ("strategy", "no-lock"))] == -100
    wait_for(lambda: cache.lock(metrics.AUDIT_REFRESH_LOCK).acquire(blocking=False))  # and released the lock


@pytest.mark.django_db
def test_an_audit_of_some_accounts_does_not_replace_the_fleet_wide_figures(make_account, settings):
    settings.METRICS_AUDIT_INTERVAL_S = 0  # only `manage.py audit` refreshes
    account = make_account()
    call_command("audit", "--account", str(account.pk))
    assert cache.get(metrics.AUDIT_KEY) is None
    assert metrics.refresh_balance_loss() is None


@pytest.mark.django_db
def test_a_failing_audit_is_retried_once_per_lock_ttl_not_at_every_scrape(client, monkeypatch, caplog):
    calls = []

    def database_down(**kwargs):
        calls.append(1)
        raise OperationalError(2003, "Can't connect to MySQL server")

    monkeypatch.setattr(services, "audit", database_down)
    first, second = scrape(client), scrape(client)
    assert calls == [1]  # the second scrape found the refresh lock still taken
    assert "ledger_balance_loss_minor_units" not in first and "ledger_audit_timestamp_seconds" not in second
    assert "ledger_circuit_breaker_state" in second  # the rest of the scrape still answers
    assert "balance loss not refreshed" in caplog.text


@pytest.mark.django_db
def test_the_circuit_breaker_state_is_exported_from_its_shared_state(client):
    from ledger.api.breaker import database_breaker

    database_breaker.cache_clear()
    opened = value("ledger_circuit_breaker_transitions_total", name="database", from_state="closed", to_state="open")
    assert scrape(client)["ledger_circuit_breaker_state"][(("name", "database"), ("state", "closed"))] == 1
    database_breaker()._breaker.open()
    try:
        states = scrape(client)["ledger_circuit_breaker_state"]
        assert {labels[1][1]: v for labels, v in states.items()} == {"closed": 0, "open": 1, "half-open": 0}
        assert (
            value("ledger_circuit_breaker_transitions_total", name="database", from_state="closed", to_state="open")
            == opened + 1
        )
    finally:
        database_breaker()._breaker.close()
        database_breaker.cache_clear()


@pytest.mark.django_db
def test_metrics_are_only_for_the_allowed_networks_and_the_token(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert client.get("/metrics").status_code == 403  # the test client is 127.0.0.1
    forged = client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"})
    assert forged.status_code == 403  # only the TCP peer counts
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200  # dual-stack socket

    settings.METRICS_TOKEN = "s3cret-token"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token s3cret-token"}):
        refused = client.get("/metrics", REMOTE_ADDR="10.1.2.3", headers=headers)
        assert refused.status_code == 401 and refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"ledger_" not in refused.content
    allowed = client.get("/metrics", REMOTE_ADDR="10.1.2.3", headers={"Authorization": "Bearer s3cret-token"})
    assert allowed.status_code == 200 and b"ledger_deductions_total" in allowed.content
    outside = client.get("/metrics", REMOTE_ADDR="192.0.2.1", headers={"Authorization": "Bearer s3cret-token"})
    assert outside.status_code == 403


@pytest.mark.django_db
def test_metrics_are_not_redirected_to_https_behind_a_tls_proxy(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/health/").status_code == 200  # exempt already
    assert client.get("/metrics").status_code == 200
    assert client.get("/admin/").status_code == 301


def test_a_malformed_allowed_network_stops_the_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env={
            **os.environ,
            "METRICS_ALLOWED_NETWORKS": "10.0.0.0/33",
            "VAR_DIR": str(tmp_path),
            "REDIS_URL": django_settings.REDIS_URL,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "METRICS_ALLOWED_NETWORKS" in result.stderr


def test_a_worker_file_not_sized_yet_does_not_fail_the_scrape(tmp_path):
    written = MmapedDict(str(tmp_path / "counter_111.db"))
    written.write_value(mmap_key("ledger_x", "ledger_x_total", (), (), "x"), 5.0, 0.0)
    written.close()
    (tmp_path / "counter_222.db").touch()  # created by a worker that has not sized it yet
    (family,) = metrics.InstanceCollector(None, path=str(tmp_path)).collect()
    assert [(sample.name, sample.value) for sample in family.samples] == [("ledger_x_total", 5.0)]
    with pytest.raises(struct.error):  # what prometheus_client's own collector does with it
        list(MultiProcessCollector(None, path=str(tmp_path)).collect())
