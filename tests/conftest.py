"""Shared fixtures. Tests run against real servers: the configured database and Redis."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import override_settings

from ledger import balance_cache, services
from ledger.api.breaker import database_breaker
from ledger.models import Account


def redis_test_url(url: str, db: int) -> str:
    """The same Redis server, another database index, so tests never touch real keys."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}?{urlencode(dict(parse_qsl(parts.query), db=str(db)))}"
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session", autouse=True)
def isolated_redis():
    """Point every cache alias at TEST_REDIS_DB (default 9) and start it empty."""
    db = int(os.environ.get("TEST_REDIS_DB", "9"))
    caches = {alias: {**config} for alias, config in settings.CACHES.items()}
    for config in caches.values():
        config["LOCATION"] = redis_test_url(config["LOCATION"], db)
    with override_settings(CACHES=caches, REDIS_URL=redis_test_url(settings.REDIS_URL, db)):
        cache.clear()
        yield


@pytest.fixture(autouse=True)
def clean_redis_state(isolated_redis):
    """Every test starts with an empty test Redis db and no process-local state built on it:
    cached balances (account ids come back in a later test: SQLite reuses a rolled-back id),
    rate-limit windows and the circuit breaker's state."""
    cache.clear()
    balance_cache.reset()
    database_breaker.cache_clear()


@pytest.fixture
def make_account(db):
    def make(balance: int = 10_000, name: str | None = None) -> Account:
        make.count += 1
        return services.open_account(name=name or f"test-account-{make.count}", balance=balance)

    make.count = 0
    return make


@pytest.fixture
def recorded_run(make_account):
    """A finished attack run with real attempts (succeeded, refused), recorded by the service."""
    from django.utils import timezone

    from ledger.models import AttackRun

    account = make_account(balance=300)
    run = AttackRun.objects.create(
        strategy="optimistic", parameters={"requests": 5}, account=account, started_at=timezone.now(), requests=5
    )
    for _ in range(5):
        services.deduct(account_id=account.pk, amount=100, strategy="optimistic", attack_run_id=run.pk)
    services.top_up(account_id=account.pk, amount=50, note="test top-up")
    AttackRun.objects.filter(pk=run.pk).update(
        status=AttackRun.Status.FINISHED, finished_at=timezone.now(), succeeded=3, insufficient_funds=2,
        tps=100.0, p50_ms=1.0, p99_ms=2.0, initial_balance=300, expected_balance=0, actual_balance=0, balance_loss=0,
    )  # fmt: skip
    run.refresh_from_db()
    return run
