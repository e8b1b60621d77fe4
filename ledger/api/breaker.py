"""The circuit breaker around the deduction path's database work (pybreaker, state in Redis).

Policy (the seed's): trip when a window holds at least BREAKER_MIN_CALLS calls and at least
BREAKER_FAILURE_RATIO of them failed; stay open BREAKER_RESET_TIMEOUT_S; then half-open, where
BREAKER_HALF_OPEN_TRIALS trial requests go through and close it if they all succeed (one
failure re-opens it).

What pybreaker gives and what is added here:
- pybreaker runs the state machine and keeps state, opening time and the half-open success
  count in Redis (CircuitRedisStorage), so every process and instance sees one breaker.
- pybreaker trips on *consecutive* failures and any success resets that shared count, which
  cannot express "≥ 3 calls and ≥ 60 % failed". Its counter is switched off here; a listener
  counts calls and failures in a fixed Redis window of BREAKER_WINDOW_S seconds (atomic
  HINCRBY, shared by all processes) and opens the breaker when the ratio is reached.
- pybreaker lets every half-open request through and does not coordinate trials across
  processes: trial permits are an atomic Redis counter per opening, so exactly
  BREAKER_HALF_OPEN_TRIALS requests test the database, the rest get 503 at once; their
  successes are counted per opening as well (see _RedisStorage).
- pybreaker's `call` holds a process-wide lock for the whole call (it would serialise every
  deduction of a worker): `call` is overridden without it; the state lives in Redis anyway.
Only an outage counts as a failure (see `is_outage`): business outcomes, validation errors,
lock waits and deadlocks are the database answering.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from django.conf import settings
from django.core.signals import setting_changed
from django.db import InterfaceError, OperationalError
from django.dispatch import receiver
from django_redis import get_redis_connection
from pybreaker import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitRedisStorage,
)
from redis import Redis
from redis.exceptions import RedisError
from rest_framework import exceptions, status

from ledger.api import counters
from strategies.base import is_lock_timeout

logger = logging.getLogger(__name__)

MYSQL_DEADLOCK = 1213
BREAKER_STATES = (STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN)


def is_outage(error: BaseException) -> bool:
    """The database could not answer: connection-level errors, not contention or bad data."""
    if not isinstance(error, OperationalError | InterfaceError):
        return False
    code = error.args[0] if error.args else None
    return not is_lock_timeout(error) and code != MYSQL_DEADLOCK


class CircuitOpen(exceptions.APIException):
    """503 with Retry-After: the breaker refused the request without touching the database."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "circuit_open"
    default_detail = "the database circuit breaker is open: requests are refused until it lets a trial through"

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.wait = retry_after


class _RedisStorage(CircuitRedisStorage):
    """pybreaker's shared state, minus its consecutive-failure counter (see the module doc),
    with the half-open success count kept per opening, like the trial permits: pybreaker
    resets that count in every process that *notices* a new state, which would erase the
    successes of trials that other processes already ran."""

    def __init__(self, *args, ttl_s: int, **kwargs) -> None:
        self.ttl_s = ttl_s
        super().__init__(*args, **kwargs)

    def opening_key(self, name: str) -> str:
        opened_at = self.opened_at
        return self._namespace(f"{name}:{int(opened_at.timestamp()) if opened_at else 0}")

    def _initialize_redis_state(self, state: str) -> None:
        # Redis down at start-up must not stop the API: the state then reads as closed.
        try:
            super()._initialize_redis_state(state)
        except RedisError as failure:
            logger.warning("circuit breaker state not initialised in Redis: %s", failure)

    def increment_counter(self) -> None:
        pass

    def reset_counter(self) -> None:
        pass

    @property
    def counter(self) -> int:
        return 0

    def increment_success_counter(self) -> None:
        try:
            pipe = self._redis.pipeline()
            pipe.incr(self.opening_key("successes"))
            pipe.expire(self.opening_key("successes"), self.ttl_s)
            pipe.execute()
        except RedisError as failure:
            logger.warning("circuit breaker success not counted: %s", failure)

    def reset_success_counter(self) -> None:
        pass  # a new opening starts a new count

    @property
    def success_counter(self) -> int:
        try:
            return int(self._redis.get(self.opening_key("successes")) or 0)
        except RedisError as failure:
            logger.warning("circuit breaker successes not read: %s", failure)
            return 0


class _FailureWindow(CircuitBreakerListener):
    """Counts calls and failures per fixed window in Redis; opens the breaker on the ratio."""

    def __init__(self, redis: Redis, namespace: str, *, window_s: int, min_calls: int, ratio: float) -> None:
        self.redis, self.namespace = redis, namespace
        self.window_s, self.min_calls, self.ratio = window_s, min_calls, ratio

    def success(self, cb: CircuitBreaker) -> None:
        self._count(cb, failed=False)

    def failure(self, cb: CircuitBreaker, exc: BaseException) -> None:
        self._count(cb, failed=True)

    def counts(self) -> tuple[int, int]:
        """(calls, failures) of the current window."""
        calls, failures = self.redis.hmget(self._key(), "calls", "failures")
        return int(calls or 0), int(failures or 0)

    def _key(self) -> str:
        return f"{self.namespace}:window:{int(time.time()) // self.window_s}"

    def _count(self, cb: CircuitBreaker, *, failed: bool) -> None:
        key = self._key()
        try:
            pipe = self.redis.pipeline()
            pipe.hincrby(key, "calls", 1)
            pipe.hincrby(key, "failures", int(failed))
            pipe.expire(key, 2 * self.window_s)
            calls, failures, _ = pipe.execute()
        except RedisError as failure:
            logger.warning("circuit breaker window not counted: %s", failure)
            return
        if failed and calls >= self.min_calls and failures / calls >= self.ratio and cb.current_state == STATE_CLOSED:
            cb.open()


class _SharedBreaker(CircuitBreaker):
    def __init__(self, *, redis: Redis, trials: int, **kwargs) -> None:
        self.redis, self.trials = redis, trials
        super().__init__(**kwargs)

    def call(self, func, *args, **kwargs):
        state = self.state
        if state.name == STATE_HALF_OPEN and not self._trial_permitted():
            raise CircuitBreakerError("half-open: every trial request is taken")
        return state.call(func, *args, **kwargs)

    def _trial_permitted(self) -> bool:
        key = self._state_storage.opening_key("trials")
        try:
            pipe = self.redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, max(1, int(self.reset_timeout)))
            taken, _ = pipe.execute()
        except RedisError as failure:
            logger.warning("circuit breaker trial permit not counted: %s", failure)
            return True
        return taken <= self.trials

    def _transition(self, change, new_state: str):
        old_state = self.current_state
        result = change()
        if old_state != new_state:
            counters.breaker_transition(name=self.name, old_state=old_state, new_state=new_state)
        return result

    def open(self) -> bool:
        return self._transition(super().open, STATE_OPEN)

    def half_open(self) -> None:
        self._transition(super().half_open, STATE_HALF_OPEN)

    def close(self) -> None:
        self._transition(super().close, STATE_CLOSED)


class DatabaseBreaker:
    """What the API uses: refuse fast while open, guard a block, count a failure seen outside."""

    def __init__(
        self,
        *,
        redis: Redis,
        namespace: str,
        min_calls: int,
        failure_ratio: float,
        window_s: int,
        reset_timeout_s: int,
        trials: int,
    ) -> None:
        self.namespace = namespace
        self.window = _FailureWindow(redis, namespace, window_s=window_s, min_calls=min_calls, ratio=failure_ratio)
        self._breaker = _SharedBreaker(
            redis=redis,
            trials=trials,
            reset_timeout=reset_timeout_s,
            success_threshold=trials,
            exclude=[lambda error: not is_outage(error)],
            listeners=[self.window],
            state_storage=_RedisStorage(STATE_CLOSED, redis, namespace=namespace, ttl_s=2 * reset_timeout_s + 60),
            name="database",
            # The request that trips the breaker reports its own database error.
            throw_new_error_on_trip=False,
        )

    @property
    def name(self) -> str:
        return self._breaker.name

    @property
    def state(self) -> str:
        return self._breaker.current_state

    def retry_after(self) -> int:
        """Whole seconds until the breaker lets a trial through (at least 1)."""
        opened_at = self._breaker._state_storage.opened_at
        if opened_at is None:
            return 1
        remaining = opened_at.timestamp() + self._breaker.reset_timeout - datetime.now(UTC).timestamp()
        return max(1, math.ceil(remaining))

    def refuse_if_open(self) -> None:
        """Raise CircuitOpen while open, before anything touches the database (two Redis reads)."""
        if self._breaker.current_state == STATE_OPEN:
            opened_at = self._breaker._state_storage.opened_at
            if opened_at is None or datetime.now(UTC).timestamp() < opened_at.timestamp() + self._breaker.reset_timeout:
                raise CircuitOpen(self.retry_after())

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run a block as one call through the breaker; CircuitOpen if it may not run."""
        try:
            with self._breaker.calling():
                yield
        except CircuitBreakerError:
            raise CircuitOpen(self.retry_after()) from None

    def record_failure(self, error: BaseException) -> None:
        """Count a failure the guarded work met outside `guard()` (e.g. authenticating)."""
        with contextlib.suppress(CircuitOpen, type(error)), self.guard():
            raise error


@functools.cache
def database_breaker() -> DatabaseBreaker:
    """The process's breaker (its state is shared through Redis with every other process)."""
    prefix = settings.CACHES["default"].get("KEY_PREFIX") or "zbl"
    return DatabaseBreaker(
        redis=get_redis_connection("default"),
        namespace=f"{prefix}:breaker:database",
        min_calls=settings.BREAKER_MIN_CALLS,
        failure_ratio=settings.BREAKER_FAILURE_RATIO,
        window_s=settings.BREAKER_WINDOW_S,
        reset_timeout_s=settings.BREAKER_RESET_TIMEOUT_S,
        trials=settings.BREAKER_HALF_OPEN_TRIALS,
    )


@receiver(setting_changed)
def _rebuild_on_settings_change(setting: str, **kwargs) -> None:
    if setting == "CACHES" or setting.startswith("BREAKER_"):
        database_breaker.cache_clear()
