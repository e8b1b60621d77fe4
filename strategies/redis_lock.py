from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django_redis import get_redis_connection
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from ledger.errors import LockTimeout, OptimisticConflict
from strategies.base import DeductionTrace, Strategy, read_and_check, write_balance
from strategies.registry import register


def lock_key(account_id: int) -> str:
    return f"ledger:account-lock:{account_id}"


MIN_BLOCK_S = 0.01


class WakeUpLock(Lock):
    """redis-py's Lock (SET NX PX with a random token, atomic check-and-delete release)
    whose waiters block on a Redis list instead of sleeping between tries.

    redis-py retries SET NX every `sleep` seconds: with its 0.1 s default a queue of
    waiters on one hot account crawls, and with a short sleep every waiter spins on Redis
    and on the GIL while the holder is trying to finish. Here the release script also
    pushes one entry on `<name>:wake`, and each waiter blocks in BLPOP on that list, so a
    release wakes exactly one waiter (Redis serves blocked clients first come, first
    served) and nobody burns CPU meanwhile. `sleep` is kept as the longest a waiter blocks
    before trying again anyway, which bounds the cost of a wake-up that never comes (a
    holder that crashed and let the TTL free the lock). django-redis's `cache.lock()` has
    no way to pass a lock class, hence building it on the raw client.
    """

    lua_release = None  # this class registers its own release script

    LUA_RELEASE_SCRIPT = """
        local token = redis.call('get', KEYS[1])
        if not token or token ~= ARGV[1] then
            return 0
        end
        redis.call('del', KEYS[1])
        redis.call('rpush', KEYS[2], 1)
        redis.call('pexpire', KEYS[2], ARGV[2])
        return 1
    """

    @property
    def wake_key(self) -> str:
        return f"{self.name}:wake"

    def acquire(self, token: bytes | None = None) -> bool:  # type: ignore[override]
        token = token or uuid.uuid4().hex.encode()
        give_up_at = time.monotonic() + self.blocking_timeout
        while not self.do_acquire(token):
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                return False
            # BLPOP's timeout 0 means forever, and Redis 6.2 (the embedded server) also blocks
            # forever on one of 1 ms (measured): never ask for less than 10 ms.
            self.redis.blpop([self.wake_key], timeout=max(MIN_BLOCK_S, min(self.sleep, remaining)))
        self.local.token = token
        return True

    def do_release(self, expected_token: bytes) -> None:
        # Stale wake-ups (releases nobody waited for) expire with the lock's own TTL.
        wake_ttl_ms = int(self.timeout * 1000)
        if not self.lua_release(keys=[self.name, self.wake_key], args=[expected_token, wake_ttl_ms], client=self.redis):
            raise LockNotOwnedError("Cannot release a lock that's no longer owned", lock_name=self.name)


@register
class RedisLock(Strategy):
    """Takes a per-account lock in Redis (redis-py's Lock through django-redis: SET NX with
    a random token and a TTL, released by an atomic check-and-delete), then reads, checks
    and writes. Every process and instance sharing the Redis server queues on the same
    lock, so it is correct across machines; it costs the Redis round trips of taking and
    releasing the lock, and waiters sleep in BLPOP until a release wakes them. A lock alone
    is not enough: a holder paused past the TTL loses the lock without knowing, so the
    write is still conditional on the version read under the lock, and an expired lock is
    recorded (lock_expired), never ignored."""

    name = "redis-lock"
    safe_across_processes = True

    def deduct(self, trace: DeductionTrace) -> None:
        lock = WakeUpLock(
            get_redis_connection("default"),
            cache.make_key(lock_key(trace.account_id)),
            timeout=settings.LEDGER_REDIS_LOCK_TTL_S,
            sleep=settings.LEDGER_REDIS_LOCK_RETRY_S,
            blocking_timeout=settings.LEDGER_LOCK_WAIT_S,
        )
        with trace.waiting_for_lock(self.name) as waited_from:
            if not lock.acquire():
                raise LockTimeout(f"redis lock not acquired within {settings.LEDGER_LOCK_WAIT_S} s")
        try:
            trace.lock_acquired(waited_from)
            balance, version = read_and_check(trace)
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
