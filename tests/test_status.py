"""The admin index's live panel: entries come from status providers, only when they have data."""

from __future__ import annotations

import re
import threading

import pytest
from django.db import connection
from prometheus_client import REGISTRY

from ledger import metrics, selectors, services, status
from ledger.api.breaker import database_breaker
from ledger.attack import launcher
from strategies import mutex
from tests.api.conftest import token_client, user_with_a_long_window
from tests.support import wait_for

# Always there: what is configured or shared (breaker), and the live counts, even at zero.
ALWAYS = ["default_strategy", "lock_waiters", "rate_limiter", "circuit_breaker"]


@pytest.mark.django_db
def test_panel_shows_the_default_strategy_and_nothing_invented(admin_client, settings):
    settings.LEDGER_DEFAULT_STRATEGY = "pessimistic"
    entries = admin_client.get("/live/status/").json()["entries"]
    keys = [entry["key"] for entry in entries]
    assert [key for key in keys if key != "cache_hit_rate"] == ALWAYS  # hit rate: once balances were read
    assert entries[0]["value"] == "pessimistic" and "FOR UPDATE" in entries[0]["detail"]


@pytest.mark.django_db
def test_panel_lists_the_last_runs_with_their_loss(admin_client, recorded_run):
    entries = {entry["key"]: entry for entry in admin_client.get("/live/status/").json()["entries"]}
    table = entries["last_runs"]["table"]
    assert table["rows"][0][:3] == [recorded_run.pk, "optimistic", "finished"]
    assert table["rows"][0][-1] == "0" and table["alerts"] == [False]
    assert table["links"] == [f"/visualize/runs/{recorded_run.pk}/"]


@pytest.mark.django_db
def test_panel_shows_an_attack_in_progress_with_its_progress(admin_client):
    lock = launcher._lock()
    assert lock.acquire(blocking=False, token="abc")
    try:
        launcher._save_state(
            {"id": "abc", "status": "running", "user": "alice", "created_at": "2026-01-01T00:00:00", "error": "",
             "finished_at": None, "request": {},
             "runs": [{"strategy": "no-lock", "done": 40, "total": 40, "run_id": 7},
                      {"strategy": "mutex", "done": 10, "total": 40, "run_id": None}]}
        )  # fmt: skip
        launcher.cache.set(launcher.LATEST_KEY, "abc")
        entries = {entry["key"]: entry for entry in admin_client.get("/live/status/").json()["entries"]}
    finally:
        lock.release()
    progress = entries["attack_in_progress"]
    assert progress["value"] == "mutex (2 of 2)"
    assert progress["progress"]["done"] == 50 and progress["progress"]["total"] == 80
    assert progress["link"].endswith("/launch/abc/")


@pytest.mark.django_db
def test_a_failing_provider_shows_its_error_instead_of_breaking_the_panel():
    entries = status.collect(["ledger.status.default_strategy", "ledger.status.no_such_provider"])
    assert entries[0]["key"] == "default_strategy"
    assert entries[1]["level"] == "error" and "ImportError" in entries[1]["detail"]


@pytest.mark.django_db
def test_status_endpoint_is_for_staff_only(client):
    response = client.get("/live/status/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db(transaction=True)
def test_lock_waiters_show_the_deductions_queued_for_a_lock_now(make_account):
    account = make_account()
    lock = mutex._lock_for(account.pk)
    lock.acquire()
    waiter = threading.Thread(
        target=lambda: (services.deduct(account_id=account.pk, amount=100, strategy="mutex"), connection.close())
    )
    try:
        waiter.start()
        wait_for(lambda: REGISTRY.get_sample_value("ledger_lock_waiters", {"strategy": "mutex"}) == 1)
        entry = status.lock_waiters()
    finally:
        lock.release()
        waiter.join(30)
    assert entry.value == "1 waiting" and entry.level == "warning"
    assert ["mutex", 1] in entry.table["rows"]
    assert "this process only" in entry.detail  # no PROMETHEUS_MULTIPROC_DIR under pytest
    after = status.lock_waiters()
    assert after.value == "nobody waiting" and after.extra["waiting"]["mutex"] == 0


@pytest.mark.django_db
def test_cache_hit_rate_is_the_share_of_balance_reads_answered_from_redis(make_account, monkeypatch):
    account = make_account()
    before = status.cache_hit_rate()
    reads = before.extra["reads"] if before else 0
    selectors.balance(account_id=account.pk)  # miss
    selectors.balance(account_id=account.pk)  # hit
    entry = status.cache_hit_rate()
    assert entry.extra["reads"] == reads + 2
    events = {
        s.labels["event"]: s.value for s in metrics.samples("ledger_balance_cache_events") if s.name.endswith("_total")
    }
    cached = events["hit"] + events["coalesced"]
    assert entry.extra["hit_rate"] == cached / (cached + events["miss"] + events["fallback"])
    assert entry.value.endswith("%")

    monkeypatch.setattr(metrics, "samples", lambda name, **kwargs: [])
    assert status.cache_hit_rate() is None  # no read yet: nothing to show


@pytest.mark.django_db
def test_rate_limiter_shows_the_limits_and_the_refused_requests(make_account, settings):
    settings.RATE_LIMIT_WRITES = "1/h"
    refused = status.rate_limiter().extra["refused"].get("api-writes", 0)
    client = token_client(user_with_a_long_window("1/h"))
    account = make_account()
    answers = [client.post(f"/api/accounts/{account.pk}/deductions/", {"amount": 1}, format="json") for _ in range(2)]
    assert [answer.status_code for answer in answers] == [201, 429]
    entry = status.rate_limiter()
    assert entry.value == f"writes 1/h · reads {settings.RATE_LIMIT_READS}"
    assert entry.extra["refused"]["api-writes"] == refused + 1 and "refused with 429" in entry.detail


@pytest.mark.django_db
def test_circuit_breaker_shows_the_shared_state():
    database_breaker.cache_clear()
    closed = status.circuit_breaker()
    assert (closed.value, closed.level) == ("closed", "ok")
    database_breaker()._breaker.open()
    try:
        opened = status.circuit_breaker()
    finally:
        database_breaker()._breaker.close()
        database_breaker.cache_clear()
    assert (opened.value, opened.level) == ("open", "error")
    assert re.search(r"trial requests in \d+ s", opened.detail)
