"""The circuit breaker: opens against a really unavailable database, refuses fast, recovers."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing

import pytest
from django.db import IntegrityError, InterfaceError, OperationalError, connections
from django_redis import get_redis_connection

from ledger.api.breaker import CircuitOpen, database_breaker, is_outage
from ledger.models import Account
from tests.api.conftest import token_client


@pytest.fixture(autouse=True)
def one_window(settings):
    """One failure-ratio window for the whole test, so no window edge can split its counts."""
    settings.BREAKER_WINDOW_S = 10**9


@contextlib.contextmanager
def database_down(tmp_path):
    """Point the real connection at a database that is not there: a closed port (MySQL) or
    a file in a directory that does not exist (SQLite). Every connect really fails."""
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "mysql":
        connection.settings_dict.update(HOST="127.0.0.1", PORT=1)
    else:
        connection.settings_dict["NAME"] = str(tmp_path / "missing" / "db.sqlite3")
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.fixture
def connects(monkeypatch) -> list[int]:
    """Counts the connection attempts of this thread's database connection."""
    connection = connections["default"]
    attempts: list[int] = []
    real = connection.get_new_connection

    def counting(params):
        attempts.append(1)
        return real(params)

    monkeypatch.setattr(connection, "get_new_connection", counting)
    return attempts


def age_the_opening(seconds: int) -> None:
    """Move the breaker's opening time back, as if `seconds` had passed (pybreaker's Redis key)."""
    redis = get_redis_connection("default")
    key = f"{database_breaker().namespace}:pybreaker:opened_at"
    redis.set(key, int(redis.get(key)) - seconds)


def deduct(client, account_id: int):
    return client.post(f"/api/accounts/{account_id}/deductions/", {"amount": 100}, format="json")


@pytest.mark.django_db(transaction=True)
def test_opens_against_an_unavailable_database_refuses_fast_and_closes_after_recovery(
    make_account, tmp_path, connects, caplog, settings
):
    caplog.set_level(logging.WARNING, logger="ledger.api.protection")
    client = token_client("alice")
    account = make_account(balance=1_000)
    with database_down(tmp_path):
        failures = [deduct(client, account.pk) for _ in range(3)]
        assert [r.status_code for r in failures] == [503, 503, 503]
        assert {r.json()["error"] for r in failures} == {"database_unavailable"}
        assert database_breaker().state == "open"

        connects.clear()
        refused = deduct(client, account.pk)
        assert refused.status_code == 503
        assert refused.json()["error"] == "circuit_open"
        assert 55 <= int(refused["Retry-After"]) <= 60
        assert connects == []  # answered without even trying the database

    # The database is back, but the breaker stays open until its 60 s have passed.
    assert deduct(client, account.pk).json()["error"] == "circuit_open"
    age_the_opening(settings.BREAKER_RESET_TIMEOUT_S)
    trials = [deduct(client, account.pk) for _ in range(3)]
    assert [r.status_code for r in trials] == [201, 201, 201]
    assert database_breaker().state == "closed"
    assert Account.objects.get(pk=account.pk).balance == 700
    assert [line for line in caplog.messages if line.startswith("circuit breaker")] == [
        "circuit breaker database: closed -> open",
        "circuit breaker database: open -> half-open",
        "circuit breaker database: half-open -> closed",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_failed_trial_opens_it_again(make_account, tmp_path, settings):
    client = token_client("alice")
    account = make_account()
    with database_down(tmp_path):
        for _ in range(3):
            deduct(client, account.pk)
        age_the_opening(settings.BREAKER_RESET_TIMEOUT_S)
        assert deduct(client, account.pk).json()["error"] == "database_unavailable"  # the trial
        assert database_breaker().state == "open"
        assert deduct(client, account.pk).json()["error"] == "circuit_open"


@pytest.mark.django_db(transaction=True)
def test_business_outcomes_are_not_failures(make_account):
    client = token_client("alice")
    account = make_account(balance=0)
    statuses = [deduct(client, account.pk).status_code for _ in range(6)]
    statuses.append(client.post("/api/accounts/999999/deductions/", {"amount": 1}, format="json").status_code)
    assert statuses == [402] * 6 + [404]
    assert database_breaker().state == "closed"
    assert database_breaker().window.counts() == (7, 0)


def outage() -> OperationalError:
    return OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1' (111)")


def call(breaker, error: BaseException | None = None) -> None:
    with contextlib.suppress(type(error) if error else ()), breaker.guard():
        if error:
            raise error


def test_trips_at_three_calls_with_sixty_percent_failed():
    breaker = database_breaker()
    call(breaker, outage())
    call(breaker, outage())
    assert breaker.state == "closed"  # 2 of 2 failed, but fewer than 3 calls
    call(breaker)
    call(breaker)
    assert breaker.state == "closed"  # 2 of 4
    call(breaker, outage())
    assert breaker.window.counts() == (5, 3)
    assert breaker.state == "open"  # 3 of 5 = 60 %


def test_half_open_lets_exactly_three_trials_through_then_closes():
    breaker = database_breaker()
    for _ in range(3):
        call(breaker, outage())
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        breaker.refuse_if_open()
    age_the_opening(60)
    with contextlib.ExitStack() as trials:
        for _ in range(3):
            trials.enter_context(breaker.guard())
        assert breaker.state == "half-open"
        with pytest.raises(CircuitOpen), breaker.guard():
            pass  # a fourth request while the three trials run
    assert breaker.state == "closed"


def _state_seen_by_another_process(results) -> None:
    database_breaker.cache_clear()  # this process builds its own breaker
    results.put(database_breaker().state)


def test_state_is_shared_by_processes_through_redis():
    breaker = database_breaker()
    for _ in range(3):
        call(breaker, outage())
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_state_seen_by_another_process, args=(results,))
    child.start()
    assert results.get(timeout=30) == "open"
    child.join(timeout=30)


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (outage(), True),
        (OperationalError(2006, "MySQL server has gone away"), True),
        (OperationalError("unable to open database file"), True),
        (InterfaceError(0, ""), True),
        (OperationalError(1205, "Lock wait timeout exceeded"), False),
        (OperationalError(1213, "Deadlock found"), False),
        (OperationalError("database is locked"), False),
        (IntegrityError(1062, "Duplicate entry"), False),
        (ValueError("bad input"), False),
    ],
)
def test_only_outages_count_as_failures(error, counts):
    assert is_outage(error) is counts
