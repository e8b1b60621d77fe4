"""Lock-based strategies: bounded waits recorded as lock_timeout; expired Redis locks recorded."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.cache import cache
from django_redis import get_redis_connection

from ledger import services
from ledger.models import Account, Outcome
from strategies import mutex, redis_lock
from tests.support import in_thread, mysql_only, set_lock_timeout


@pytest.mark.django_db
def test_redis_lock_times_out_while_another_holder_keeps_the_lock(make_account, settings):
    settings.LEDGER_LOCK_WAIT_S = 0.2
    account = make_account()
    holder = cache.lock(redis_lock.lock_key(account.pk), timeout=30)
    assert holder.acquire(blocking=False)
    try:
        attempt = services.deduct(account_id=account.pk, amount=100, strategy="redis-lock")
    finally:
        holder.release()
    assert attempt.outcome == Outcome.LOCK_TIMEOUT
    assert "not acquired within 0.2 s" in attempt.error
    assert Account.objects.get(pk=account.pk).balance == 10_000


@pytest.mark.django_db
def test_mutex_times_out_while_another_thread_holds_the_process_lock(make_account, settings):
    settings.LEDGER_LOCK_WAIT_S = 0.2
    account = make_account()
    with mutex._lock_for(account.pk):
        attempt = services.deduct(account_id=account.pk, amount=100, strategy="mutex")
    assert attempt.outcome == Outcome.LOCK_TIMEOUT


def wait_until_lock_expires(account_id: int, timeout: float = 5) -> None:
    key = cache.make_key(redis_lock.lock_key(account_id))
    deadline = time.monotonic() + timeout
    while get_redis_connection().exists(key):
        assert time.monotonic() < deadline, "the lock never expired"
        time.sleep(0.01)


@pytest.mark.django_db(transaction=True)
def test_redis_lock_that_expired_before_release_is_recorded(make_account, settings):
    settings.LEDGER_REDIS_LOCK_TTL_S = 0.2
    account = make_account(balance=1_000)
    attempt = services.deduct(
        account_id=account.pk,
        amount=100,
        strategy="redis-lock",
        after_read=lambda: wait_until_lock_expires(account.pk),
    )
    assert attempt.outcome == Outcome.SUCCEEDED  # nobody else wrote: the fenced write is still right
    assert attempt.lock_expired
    assert "expired before it was released" in attempt.error
    stored = type(attempt).objects.get(pk=attempt.pk)
    assert stored.lock_expired and "lock_expired" in [e["event"] for e in stored.events]


@pytest.mark.django_db(transaction=True)
def test_redis_lock_fences_the_write_when_another_writer_got_in_after_expiry(make_account, settings):
    settings.LEDGER_REDIS_LOCK_TTL_S = 0.2
    account = make_account(balance=1_000)

    def expire_then_let_another_request_write() -> None:
        wait_until_lock_expires(account.pk)
        in_thread(lambda: services.deduct(account_id=account.pk, amount=300, strategy="redis-lock"))

    attempt = services.deduct(
        account_id=account.pk, amount=100, strategy="redis-lock", after_read=expire_then_let_another_request_write
    )
    assert attempt.outcome == Outcome.CONFLICT
    assert attempt.lock_expired
    account.refresh_from_db()
    assert account.balance == 700
    assert services.audit(account_ids=[account.pk])[0].ok


@mysql_only("on SQLite the refused attempt's own record waits on the same database write lock")
@pytest.mark.django_db(transaction=True)
def test_pessimistic_records_lock_timeout_when_the_row_stays_locked(make_account):
    from django.db import transaction

    from strategies.base import read_balance

    account = make_account()
    locked, release = threading.Event(), threading.Event()

    def hold_row_lock() -> None:
        with transaction.atomic():
            read_balance(account.pk, for_update=True)
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=lambda: in_thread(hold_row_lock))
    holder.start()
    try:
        assert locked.wait(10)
        set_lock_timeout(1)
        attempt = services.deduct(account_id=account.pk, amount=100, strategy="pessimistic")
    finally:
        release.set()
        holder.join(30)
    assert attempt.outcome == Outcome.LOCK_TIMEOUT
    assert "1205" in attempt.error


def make_wakeup_lock(name: str, *, retry_s: float) -> redis_lock.WakeUpLock:
    return redis_lock.WakeUpLock(
        get_redis_connection(), cache.make_key(name), timeout=10, sleep=retry_s, blocking_timeout=30
    )


def test_wakeup_lock_release_wakes_a_waiter_without_waiting_for_its_retry():
    holder = make_wakeup_lock("test:wakeup", retry_s=30)
    assert holder.acquire()
    waiting, acquired = threading.Event(), threading.Event()

    def wait_for_lock() -> None:
        waiter = make_wakeup_lock("test:wakeup", retry_s=30)
        waiting.set()
        assert waiter.acquire()
        acquired.set()
        waiter.release()

    thread = threading.Thread(target=wait_for_lock)
    thread.start()
    assert waiting.wait(5)
    assert not acquired.is_set()
    holder.release()
    # With a 30 s retry, only the release's wake-up can let the waiter in within this bound.
    assert acquired.wait(10), "the waiter was not woken by the release"
    thread.join(10)


def test_wakeup_lock_refuses_to_release_a_lock_it_no_longer_owns():
    from redis.exceptions import LockNotOwnedError

    lock = make_wakeup_lock("test:expired", retry_s=0.05)
    assert lock.acquire()
    get_redis_connection().delete(lock.name)  # as if the TTL ran out
    with pytest.raises(LockNotOwnedError):
        lock.release()
    assert not get_redis_connection().exists(lock.wake_key)  # nobody is woken for a lock it did not hold


def test_wakeup_lock_gives_up_on_time_even_when_almost_no_wait_is_left():
    """A last BLPOP of ~1 ms blocked forever on Redis 6.2; every wait must end by its deadline."""
    holder = make_wakeup_lock("test:short-waits", retry_s=0.05)
    assert holder.acquire()
    results = []

    def try_briefly() -> None:
        for wait_s in (0.001, 0.005, 0.011, 0.02, 0.051, 0.1):
            waiter = redis_lock.WakeUpLock(
                get_redis_connection(), holder.name, timeout=10, sleep=0.05, blocking_timeout=wait_s
            )
            results.append(waiter.acquire())

    thread = threading.Thread(target=try_briefly)
    thread.start()
    thread.join(10)  # a hung BLPOP would block for the socket timeout per try
    holder.release()
    assert not thread.is_alive(), "a wait outlived its deadline"
    assert results == [False] * 6
