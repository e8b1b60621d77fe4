"""Cached balance reads (ledger.balance_cache behind ledger.selectors.balance), on real Redis."""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection

from ledger import balance_cache, selectors, services
from ledger.attack.engine import AttackPlan, ClientView, run_attack
from ledger.attack.targets import READ, Sample
from ledger.balance_cache import CACHE, DATABASE, FALLBACK, balance_key
from ledger.errors import AccountNotFound
from ledger.models import Outcome
from project import embedded_redis
from strategies import registry
from tests.support import run_concurrently, run_in_processes

CORRECT = [s.name for s in registry.all_strategies() if s.safe_across_processes]


def cached(account_id: int) -> tuple[int, int] | None:
    """(version, balance) as Redis holds it right now, or None."""
    raw = get_redis_connection("default").get(balance_key(account_id))
    if raw is None:
        return None
    version, _, amount = raw.decode().partition(":")
    return int(version), int(amount)


def account_queries(queries: CaptureQueriesContext) -> int:
    return sum("ledger_account" in query["sql"] for query in queries.captured_queries)


@pytest.mark.django_db
def test_a_miss_loads_from_the_database_and_the_next_read_hits(make_account):
    account = make_account(balance=700)
    first = selectors.balance(account_id=account.pk)
    second = selectors.balance(account_id=account.pk)
    assert (first.balance, first.version, first.source) == (700, 0, DATABASE)
    assert (second.balance, second.version, second.source) == (700, 0, CACHE)
    assert balance_cache.counts()["miss"] == 1 and balance_cache.counts()["hit"] == 1


@pytest.mark.django_db
def test_an_unknown_account_is_refused_and_leaves_nothing_in_redis():
    with pytest.raises(AccountNotFound):
        selectors.balance(account_id=987_654)
    redis = get_redis_connection("default")
    assert cached(987_654) is None
    assert not redis.exists(cache.make_key("ledger:balance-fill:987654"))  # the fill lock was released


@pytest.mark.django_db
def test_cached_balances_expire_after_the_ttl_plus_jitter(make_account, settings):
    settings.LEDGER_BALANCE_CACHE_TTL_S, settings.LEDGER_BALANCE_CACHE_JITTER_S = 300, 30
    account = make_account()
    selectors.balance(account_id=account.pk)
    ttl_ms = get_redis_connection("default").pttl(balance_key(account.pk))
    assert 299_000 < ttl_ms <= 330_000


@pytest.mark.django_db
def test_a_ttl_of_zero_turns_the_cache_off(make_account, settings):
    settings.LEDGER_BALANCE_CACHE_TTL_S = 0
    account = make_account()
    assert [selectors.balance(account_id=account.pk).source for _ in range(2)] == [DATABASE, DATABASE]
    assert cached(account.pk) is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "change",
    [*registry.names(), "top_up", "reset_balance"],
)
def test_every_balance_change_reaches_the_cache_once_committed(change, make_account):
    account = make_account(balance=1_000)
    assert selectors.balance(account_id=account.pk).source == DATABASE  # cached at version 0
    if change == "top_up":
        services.top_up(account_id=account.pk, amount=500)
        expected = 1_500
    elif change == "reset_balance":
        services.reset_balance(account_id=account.pk, balance=42)
        expected = 42
    else:
        assert services.deduct(account_id=account.pk, amount=100, strategy=change).outcome == Outcome.SUCCEEDED
        expected = 900
    seen = selectors.balance(account_id=account.pk)
    assert (seen.balance, seen.version, seen.source) == (expected, 1, CACHE)


@pytest.mark.django_db(transaction=True)
def test_a_change_reaches_the_cache_only_when_the_outer_transaction_commits(make_account):
    account = make_account(balance=1_000)
    selectors.balance(account_id=account.pk)
    with transaction.atomic():
        services.top_up(account_id=account.pk, amount=1)
        assert cached(account.pk) == (0, 1_000)  # not committed yet: nobody may see it
    assert cached(account.pk) == (1, 1_001)


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_never_reaches_the_cache(make_account):
    account = make_account(balance=1_000)
    selectors.balance(account_id=account.pk)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.deduct(account_id=account.pk, amount=100, strategy="atomic")
        raise RuntimeError("roll it back")
    assert cached(account.pk) == (0, 1_000)
    assert selectors.balance(account_id=account.pk).version == 0


@pytest.mark.django_db
@pytest.mark.parametrize("strategy", registry.names())
def test_no_strategy_approves_a_deduction_from_the_cached_balance(strategy, make_account):
    account = make_account(balance=50)
    # The cache claims a fortune (as a bug or a poisoned key would); the database says 50.
    balance_cache.publish(account.pk, version=1_000, balance=10**9)
    assert selectors.balance(account_id=account.pk).balance == 10**9
    attempt = services.deduct(account_id=account.pk, amount=100, strategy=strategy)
    assert attempt.outcome == Outcome.INSUFFICIENT_FUNDS
    assert attempt.balance_before == 50


def race_a_reader_against_a_writer(account_id: int, monkeypatch, *, before_write=None) -> list[Sample]:
    """Force the interleaving that makes cache-aside stale, and return what the writer saw.

    The writer runs `before_write`; the reader misses and loads the row from the database;
    before it can store that row in the cache, the writer commits a deduction; then the reader
    stores what it loaded; then the writer reads its balance. Events, not sleeps, order it.
    """
    ready, loaded, committed, stored = (threading.Event() for _ in range(4))
    load_from_database = selectors.read_balance

    def load_then_let_the_writer_commit(account: int) -> tuple[int, int]:
        row = load_from_database(account)
        loaded.set()
        assert committed.wait(10)
        return row

    monkeypatch.setattr(selectors, "read_balance", load_then_let_the_writer_commit)

    def reader() -> None:
        assert ready.wait(10)
        try:
            assert selectors.balance(account_id=account_id).version == 0
        finally:
            stored.set()

    def writer() -> list[Sample]:
        client = ClientView()
        if before_write:
            before_write()
        ready.set()
        assert loaded.wait(10)
        attempt = services.deduct(account_id=account_id, amount=100, strategy="atomic")
        committed.set()
        wrote = client.observe(Sample(attempt.outcome, 0.0, 0, None, attempt.version_after))
        assert stored.wait(10)
        seen = selectors.balance(account_id=account_id)
        return [wrote, client.observe(Sample(READ, 0.0, 0, None, seen.version, seen.source))]

    return run_concurrently(2, lambda i: (reader, writer)[i]())[1]


@pytest.mark.django_db(transaction=True)
def test_a_reader_holding_an_older_row_cannot_put_it_back_after_a_commit(make_account, monkeypatch):
    account = make_account(balance=1_000)  # cold, as after an expiry: the reader misses
    wrote, read = race_a_reader_against_a_writer(account.pk, monkeypatch)
    assert wrote.version == 1
    assert (read.version, read.source, read.stale) == (1, CACHE, False)
    assert balance_cache.counts()["fill_refused"] == 1  # the reader's version 0 was turned away
    assert cached(account.pk) == (1, 900)


@pytest.mark.django_db(transaction=True)
def test_the_seeds_delete_before_write_ordering_serves_a_stale_read(make_account, monkeypatch):
    """The same race with the seed's cache-aside, deliberately put back: delete the key before
    the database write, no refresh after it, and readers SET whatever they loaded. It must
    show a stale read, or the test above proves nothing."""
    account = make_account(balance=1_000)
    selectors.balance(account_id=account.pk)  # warm: the seed's delete is what makes the reader miss
    redis = get_redis_connection("default")
    monkeypatch.setattr(balance_cache, "publish", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        balance_cache,
        "_store",
        lambda account_id, *, balance, version: bool(redis.set(balance_key(account_id), f"{version}:{balance}")),
    )
    wrote, read = race_a_reader_against_a_writer(
        account.pk, monkeypatch, before_write=lambda: redis.delete(balance_key(account.pk))
    )
    assert wrote.version == 1
    assert (read.version, read.source, read.stale) == (0, CACHE, True)
    assert cached(account.pk) == (0, 1_000)  # and it stays there for the whole TTL


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("processes", "threads"), [(1, 12), (2, 6)])
def test_a_miss_storm_on_a_cold_key_reads_the_database_once(processes, threads, make_account, monkeypatch, settings):
    """12 readers miss together, as threads of one process or of two (the fill lock lives in
    Redis, not in a process): the one holding the fill lock loads, the others wait for it.

    Exactly once while the load takes less than the fill lock's TTL (raised here so that a slow
    CI machine cannot expire it); in general at most one more load per further TTL.
    """
    settings.LEDGER_BALANCE_CACHE_FILL_LOCK_TTL_S = 30
    account = make_account(balance=1_000)
    readers = processes * threads
    context = multiprocessing.get_context("fork")
    noted, missed = context.Condition(), context.Value("i", 0)  # shared with forked processes
    first_miss = threading.local()
    get, load = balance_cache._get, selectors.read_balance

    def get_and_note_who_missed(account_id: int):
        found = get(account_id)
        if found is None and not getattr(first_miss, "noted", False):
            first_miss.noted = True
            with noted:
                missed.value += 1
                noted.notify_all()
        return found

    def load_once_everyone_has_missed(account_id: int) -> tuple[int, int]:
        # A real storm: the load completes only after every reader has missed.
        with noted:
            assert noted.wait_for(lambda: missed.value == readers, timeout=20)
        return load(account_id)

    monkeypatch.setattr(balance_cache, "_get", get_and_note_who_missed)
    monkeypatch.setattr(selectors, "read_balance", load_once_everyone_has_missed)

    def read(_: int) -> tuple[str, int]:
        with CaptureQueriesContext(connection) as queries:
            seen = selectors.balance(account_id=account.pk)
        assert (seen.balance, seen.version) == (1_000, 0)
        return seen.source, account_queries(queries)

    results = run_concurrently(threads, read) if processes == 1 else run_in_processes(processes, threads, read)
    assert sum(queries for _, queries in results) == 1
    assert sorted(source for source, _ in results) == [CACHE] * (readers - 1) + [DATABASE]
    if processes == 1:
        counts = balance_cache.counts()
        assert (counts["miss"], counts["coalesced"], counts["hit"]) == (1, readers - 1, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("strategy", "processes"), [("atomic", 1), ("atomic", 2), ("pessimistic", 2), ("optimistic", 1), ("redis-lock", 2)]
)
def test_concurrent_readers_and_writers_on_one_hot_account_never_read_stale(strategy, processes):
    """Readers and writers mixed on every worker, threads or two processes (like two instances):
    no read is ever older than what its worker had seen committed."""
    plan = AttackPlan(
        strategy=strategy, requests=300, concurrency=8, processes=processes, amount=10, balance=100_000, read_ratio=0.9
    )
    run = run_attack(plan)
    assert run.reads == 270 and run.requests == 300
    assert run.stale_reads == 0
    assert run.balance_loss == 0
    assert 0 < run.cache_hit_rate <= 1


@pytest.fixture
def private_redis(settings):
    """A Redis server of this test's own, which it may really stop (never the shared one)."""
    # A short directory: a unix socket path must fit in 108 bytes.
    var_dir = Path(tempfile.mkdtemp(prefix="zbl-redis-"))
    url = embedded_redis.ensure_running(var_dir)
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": url,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        }
    }
    try:
        yield var_dir
    finally:
        embedded_redis.stop(var_dir)
        shutil.rmtree(var_dir, ignore_errors=True)


@pytest.mark.django_db(transaction=True)
def test_with_redis_stopped_reads_answer_from_the_database_and_writes_commit(private_redis, make_account, settings):
    settings.LEDGER_BALANCE_CACHE_RETRY_S = 0  # try Redis again at once: no timing in this test
    account = make_account(balance=1_000)
    assert selectors.balance(account_id=account.pk).source == DATABASE

    assert embedded_redis.stop(private_redis)
    during = selectors.balance(account_id=account.pk)
    assert (during.balance, during.version, during.source) == (1_000, 0, FALLBACK)
    attempt = services.deduct(account_id=account.pk, amount=100, strategy="atomic")
    assert attempt.outcome == Outcome.SUCCEEDED  # writes never depend on the cache
    after = selectors.balance(account_id=account.pk)
    assert (after.balance, after.version, after.source) == (900, 1, FALLBACK)
    counts = balance_cache.counts()
    assert (counts["fallback"], counts["publish_deferred"]) == (2, 1)

    embedded_redis.ensure_running(private_redis)
    back = selectors.balance(account_id=account.pk)
    # The change kept while Redis was down is stored first, so the first look already hits it.
    assert (back.balance, back.version, back.source) == (900, 1, CACHE)


@pytest.mark.django_db(transaction=True)
def test_a_change_committed_while_redis_was_unreachable_supersedes_the_old_value(make_account, settings):
    """Redis keeps its data but this process could not reach it when the change committed
    (a network blip): the old value must not be served once Redis answers again."""
    settings.LEDGER_BALANCE_CACHE_RETRY_S = 0
    account = make_account(balance=1_000)
    selectors.balance(account_id=account.pk)
    reachable = settings.CACHES
    # A real, unreachable server: a closed port on loopback.
    settings.CACHES = {"default": {**reachable["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    services.top_up(account_id=account.pk, amount=5)
    assert balance_cache.counts()["publish_deferred"] == 1
    settings.CACHES = reachable
    assert cached(account.pk) == (0, 1_000)  # what any other process would still be served...
    seen = selectors.balance(account_id=account.pk)
    assert (seen.version, seen.source) == (1, CACHE)  # ...until this process stores what it kept
    assert cached(account.pk) == (1, 1_005)
