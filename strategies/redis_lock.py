from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from redis.exceptions import LockNotOwnedError

from ledger.errors import InsufficientFunds, LockTimeout, OptimisticConflict
from strategies.base import DeductionTrace, Strategy, read_balance, write_balance
from strategies.registry import register


def lock_key(account_id: int) -> str:
    return f"ledger:account-lock:{account_id}"


@register
class RedisLock(Strategy):
    """Takes a per-account lock in Redis (redis-py's Lock through django-redis: SET NX with
    a random token and a TTL, released by an atomic check-and-delete), then reads, checks
    and writes. Every process and instance sharing the Redis server queues on the same
    lock, so it is correct across machines; it costs two extra Redis round trips plus the
    polling wait of the queue. A lock alone is not enough: a holder paused past the TTL
    loses the lock without knowing, so the write is still conditional on the version read
    under the lock, and an expired lock is recorded (lock_expired), never ignored."""

    name = "redis-lock"
    safe_across_processes = True

    def deduct(self, trace: DeductionTrace) -> None:
        lock = cache.lock(
            lock_key(trace.account_id),
            timeout=settings.LEDGER_REDIS_LOCK_TTL_S,
            sleep=settings.LEDGER_REDIS_LOCK_POLL_S,
            blocking_timeout=settings.LEDGER_LOCK_WAIT_S,
        )
        waited_from = time.perf_counter()
        if not lock.acquire():
            raise LockTimeout(f"redis lock not acquired within {settings.LEDGER_LOCK_WAIT_S} s")
        try:
            trace.lock_acquired(waited_from)
            balance, version = read_balance(trace.account_id)
            trace.read(balance, version)
            if balance < trace.amount:
                raise InsufficientFunds(balance=balance, amount=trace.amount)
            trace.think()
            after = balance - trace.amount
            with transaction.atomic():
                # Fencing: if the lock expired and someone else wrote, this matches no row.
                if not write_balance(trace.account_id, balance=after, version=version + 1, expected_version=version):
                    raise OptimisticConflict("the version changed while the redis lock was believed held")
                trace.succeed(
                    balance_before=balance, balance_after=after, version_before=version, version_after=version + 1
                )
        finally:
            try:
                lock.release()
            except LockNotOwnedError:
                trace.lock_expired = True
                trace.event("lock_expired", ttl_s=settings.LEDGER_REDIS_LOCK_TTL_S)
