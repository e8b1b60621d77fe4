"""Rate limiting: 429 + Retry-After, counted, nothing written, shared by processes through Redis."""

from __future__ import annotations

import logging
import multiprocessing
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django_ratelimit.core import _get_window, _split_rate

from ledger.api.tokens import ensure_token
from ledger.models import DeductionAttempt
from tests.api.conftest import token_client


def deduct(client, account_id: int):
    return client.post(f"/api/accounts/{account_id}/deductions/", {"amount": 1}, format="json")


def user_with_a_long_window(rate: str, margin_s: int = 60) -> str:
    """A user whose fixed window (django-ratelimit staggers them per key) will not roll over
    while the test runs: the counts the test asserts then all belong to one window."""
    _, period = _split_rate(rate)
    for n in range(100):
        username = f"limited-{n}"
        ensure_token(username=username)
        user_id = get_user_model().objects.get(username=username).pk
        if _get_window(str(user_id), period) - time.time() >= margin_s:
            return username
    raise AssertionError("no user with enough time left in its window")


def test_over_the_limit_is_429_with_retry_after_and_writes_nothing(make_account, settings, caplog):
    settings.RATE_LIMIT_WRITES = "3/h"
    client = token_client(user_with_a_long_window("3/h"))
    account = make_account(balance=1_000)
    assert [deduct(client, account.pk).status_code for _ in range(3)] == [201, 201, 201]
    with caplog.at_level(logging.INFO, logger="ledger.api.protection"):
        refused = deduct(client, account.pk)
    assert refused.status_code == 429
    assert refused.json()["error"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 3600
    assert DeductionAttempt.objects.count() == 3
    assert "rate limited: group=api-writes" in caplog.text


def test_reads_and_writes_have_their_own_limits_and_users_their_own_counters(make_account, settings):
    settings.RATE_LIMIT_WRITES = "1/h"
    settings.RATE_LIMIT_READS = "2/h"
    alice = token_client(user_with_a_long_window("1/h"))
    account = make_account()
    assert deduct(alice, account.pk).status_code == 201
    assert deduct(alice, account.pk).status_code == 429
    assert [alice.get("/api/strategies/").status_code for _ in range(3)] == [200, 200, 429]
    bob = token_client("bob")
    assert deduct(bob, account.pk).status_code == 201


def test_an_empty_rate_disables_the_limit(api, make_account, settings):
    settings.RATE_LIMIT_WRITES = ""
    account = make_account()
    assert {deduct(api, account.pk).status_code for _ in range(5)} == {201}


def test_rate_limiting_fails_open_when_redis_is_down(api, make_account, settings):
    # A real, unreachable Redis server: a closed port on loopback.
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2},
        }
    }
    settings.RATE_LIMIT_WRITES = "1/h"
    account = make_account()
    assert [deduct(api, account.pk).status_code for _ in range(2)] == [201, 201]


def _hammer(account_id: int, token: str, count: int, start, results) -> None:
    from rest_framework.test import APIClient

    try:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        start.wait(timeout=30)
        results.put([deduct(client, account_id).status_code for _ in range(count)])
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_two_processes_share_one_limit_through_redis(make_account, settings):
    settings.RATE_LIMIT_WRITES = "10/h"
    token = ensure_token(username=user_with_a_long_window("10/h"))
    account = make_account(balance=1_000)
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    connections.close_all()
    children = [context.Process(target=_hammer, args=(account.pk, token, 8, start, results)) for _ in range(2)]
    for child in children:
        child.start()
    statuses = [status for _ in children for status in results.get(timeout=60)]
    for child in children:
        child.join(timeout=60)
    assert sorted(statuses).count(201) == 10
    assert statuses.count(429) == 6
    assert DeductionAttempt.objects.count() == 10
