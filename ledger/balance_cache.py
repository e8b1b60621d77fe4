"""Cache-aside balance reads in Redis that are never stale after a commit.

The selector `ledger.selectors.balance` reads through here; nothing that moves money does.

* **Versioned values.** The key holds "version:balance" and is only ever replaced by a higher
  version, by one atomic compare-and-set in Redis. Every balance change increments the account's
  version by exactly one, so a higher version is always a later committed state.
* **Invalidation after commit, by replacement.** `ledger.services` calls `publish` after each
  balance change commits, with the (version, balance) it committed: the old value is superseded
  rather than deleted, so readers keep hitting after a write.
* **No stale set.** A reader that loaded an older row from the database offers it with the same
  compare-and-set, so it can never put an old balance back over a newer one (the seed deleted the
  key before writing, and a reader could refill it with the old balance for a whole TTL).
* **Single flight.** On a miss, one reader per account, across processes, holds a short Redis lock
  and loads from the database; the others poll the key for its value.
* **Redis down.** Reads answer from the database (source "fallback") and this process leaves Redis
  alone for `LEDGER_BALANCE_CACHE_RETRY_S`; writes never wait for Redis; a publish that failed is
  kept and retried by this process before it next uses the cache.

Every outcome is counted in one place, `count()` (also the `ledger_balance_cache_events_total` metric).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum

from django.conf import settings
from django.core.cache import cache
from django_redis import get_redis_connection
from redis.exceptions import LockError, RedisError

from ledger import metrics

logger = logging.getLogger(__name__)

# Where a read's balance came from (BalanceRead.source).
CACHE = "cache"  # the cached value, on the first look or after waiting for another reader's load
DATABASE = "database"  # loaded from the database by this read (a miss, or the cache turned off)
FALLBACK = "fallback"  # loaded from the database because Redis was unavailable

Loader = Callable[[int], tuple[int, int]]  # account id -> (balance, version) as committed


class CacheEvent(StrEnum):
    HIT = "hit"  # served from the cache on the first look
    COALESCED = "coalesced"  # served from the cache after another reader's load (single flight)
    MISS = "miss"  # loaded from the database by this read and offered to the cache
    FILL_REFUSED = "fill_refused"  # the loaded row was older than the cached value: not stored
    FALLBACK = "fallback"  # Redis unavailable: answered from the database
    PUBLISHED = "published"  # a committed change reached the cache
    PUBLISH_DEFERRED = "publish_deferred"  # a committed change could not reach Redis: kept for a retry


_counts: Counter[CacheEvent] = Counter()
_counts_lock = threading.Lock()
# Created at 0 for every event, so that hit rates exist from the start.
_metric = {event: metrics.BALANCE_CACHE_EVENTS.labels(event.value) for event in CacheEvent}


def count(event: CacheEvent) -> None:
    """The one place cache outcomes are counted: per process here, and in Prometheus (ledger.metrics)."""
    with _counts_lock:
        _counts[event] += 1
    _metric[event].inc()


def counts() -> dict[str, int]:
    """This process's counts since start (or `reset()`), by event name."""
    with _counts_lock:
        return {event.value: _counts[event] for event in CacheEvent}


# The compare-and-set, in one round trip. A Lua script through django-redis's raw client because
# neither django-redis nor redis-py has a "set if the stored version is lower"; WATCH/MULTI would
# need a retry loop over several round trips. Versions are compared as decimal strings (length,
# then characters) so they stay exact beyond 2^53, where Lua's numbers (doubles) round.
_STORE_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local held = string.match(current, '^(%d+):')
  if held and (#held > #ARGV[1] or (#held == #ARGV[1] and held >= ARGV[1])) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""


def _enabled() -> bool:
    return settings.LEDGER_BALANCE_CACHE_TTL_S > 0


def balance_key(account_id: int) -> str:
    """The Redis key of an account's cached balance (with the cache's KEY_PREFIX)."""
    return cache.make_key(f"ledger:balance:{account_id}")


def _fill_lock_key(account_id: int) -> str:
    return f"ledger:balance-fill:{account_id}"


def _get(account_id: int) -> tuple[int, int] | None:
    raw = get_redis_connection("default").get(balance_key(account_id))
    if raw is None:
        return None
    version, _, amount = raw.partition(b":")
    return int(amount), int(version)


def _store(account_id: int, *, balance: int, version: int) -> bool:
    """Store (version, balance) unless the cache already holds this version or a newer one."""
    # Random jitter so keys filled together do not all expire together (an avalanche of misses).
    ttl_s = settings.LEDGER_BALANCE_CACHE_TTL_S + random.uniform(0, settings.LEDGER_BALANCE_CACHE_JITTER_S)
    client = get_redis_connection("default")
    script = client.register_script(_STORE_IF_NEWER)
    return bool(script(keys=[balance_key(account_id)], args=[version, balance, int(ttl_s * 1000)]))


# Redis failures: this process stops asking Redis until _retry_at (time.monotonic()), so that a
# hung server costs one socket timeout per retry period rather than one per read. Not pybreaker:
# its call() holds one lock around the wrapped call, which would serialise every Redis round trip
# of every thread of the process.
_retry_at = 0.0


def _redis_usable() -> bool:
    return time.monotonic() >= _retry_at


def _redis_failed(failure: RedisError) -> None:
    global _retry_at
    if _redis_usable():
        logger.warning(
            "balance cache: Redis failed (%s: %s); reading balances from the database for %s s",
            type(failure).__name__, failure, settings.LEDGER_BALANCE_CACHE_RETRY_S,
        )  # fmt: skip
    _retry_at = time.monotonic() + settings.LEDGER_BALANCE_CACHE_RETRY_S


def read(account_id: int, load: Loader) -> tuple[int, int, str]:
    """(balance, version, source) of an account: from the cache, or loaded and offered to it.

    Raises what `load` raises (AccountNotFound, database errors); never a Redis error.
    """
    if not _enabled():
        return (*load(account_id), DATABASE)
    if _redis_usable():
        try:
            _publish_pending()
            cached = _get(account_id)
            if cached is not None:
                count(CacheEvent.HIT)
                return (*cached, CACHE)
            return _load_once(account_id, load)
        except RedisError as failure:
            _redis_failed(failure)
    count(CacheEvent.FALLBACK)
    return (*load(account_id), FALLBACK)


def _load_once(account_id: int, load: Loader) -> tuple[int, int, str]:
    """Single flight: the reader holding the fill lock loads; the others wait for its value."""
    ttl_s = settings.LEDGER_BALANCE_CACHE_FILL_LOCK_TTL_S
    lock = cache.lock(_fill_lock_key(account_id), timeout=ttl_s)
    deadline = time.monotonic() + ttl_s
    while True:
        if lock.acquire(blocking=False):
            try:
                # The previous holder may have stored the value between our look and our lock.
                cached = _get(account_id)
                if cached is not None:
                    count(CacheEvent.COALESCED)
                    return (*cached, CACHE)
                return _load_and_offer(account_id, load)
            finally:
                _release(lock)
        if time.monotonic() >= deadline:
            # The holder kept the lock for its whole TTL without storing: stop waiting for it.
            return _load_and_offer(account_id, load)
        # Polling, like redis-py's own Lock: the wait lasts one database read, and a wake-up
        # (pub/sub) would cost every waiter a connection of its own.
        time.sleep(settings.LEDGER_BALANCE_CACHE_POLL_S)
        cached = _get(account_id)
        if cached is not None:
            count(CacheEvent.COALESCED)
            return (*cached, CACHE)


def _load_and_offer(account_id: int, load: Loader) -> tuple[int, int, str]:
    balance, version = load(account_id)
    try:
        if not _store(account_id, balance=balance, version=version):
            count(CacheEvent.FILL_REFUSED)
    except RedisError as failure:
        # The database answered: keep its value rather than loading it again in the fallback.
        _redis_failed(failure)
        count(CacheEvent.FALLBACK)
        return balance, version, FALLBACK
    count(CacheEvent.MISS)
    return balance, version, DATABASE


def _release(lock) -> None:
    try:
        lock.release()
    except LockError:
        pass  # expired while loading: another reader may already hold it; nothing to undo
    except RedisError as failure:
        _redis_failed(failure)  # the lock expires by its TTL


# Committed changes not yet in the cache because Redis failed, per account: (version, balance).
# Bounded: past the bound the oldest are dropped, and their cached values expire with their TTL.
_MAX_PENDING = 10_000
_pending: dict[int, tuple[int, int]] = {}
_pending_lock = threading.Lock()


def _keep_pending(account_id: int, version: int, balance: int) -> None:
    with _pending_lock:
        held = _pending.pop(account_id, None)
        _pending[account_id] = max(held, (version, balance)) if held else (version, balance)
        while len(_pending) > _MAX_PENDING:
            del _pending[next(iter(_pending))]


def _publish_pending() -> None:
    """Store every kept change (raises RedisError). A change leaves the list only once stored,
    so a thread that finds the list empty knows every change kept so far is in Redis."""
    if not _pending:
        return
    with _pending_lock:
        batch = list(_pending.items())
    for account_id, (version, balance) in batch:
        _store(account_id, balance=balance, version=version)
        with _pending_lock:
            if _pending.get(account_id) == (version, balance):
                del _pending[account_id]


def publish(account_id: int, *, version: int, balance: int) -> None:
    """Put a committed (version, balance) in the cache, superseding older values. Never raises.

    Called by ledger.services after a balance change commits. If Redis is unavailable the change
    is kept and stored by this process before it next uses the cache.
    """
    if not _enabled():
        return
    if _redis_usable():
        try:
            _publish_pending()
            _store(account_id, balance=balance, version=version)
            count(CacheEvent.PUBLISHED)
            return
        except RedisError as failure:
            _redis_failed(failure)
    _keep_pending(account_id, version, balance)
    count(CacheEvent.PUBLISH_DEFERRED)


def reset() -> None:
    """Forget this process's counts, kept changes and Redis failure (tests; after FLUSHDB)."""
    global _retry_at
    with _counts_lock:
        _counts.clear()
    with _pending_lock:
        _pending.clear()
    _retry_at = 0.0
