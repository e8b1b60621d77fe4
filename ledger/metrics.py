"""The ledger's Prometheus metrics: defined here, counted at the one place that knows each event.

Where each is counted:

* deductions, their duration, lock wait and optimistic retries: from the recorded attempt,
  once per `ledger.services.deduct` call (`counts_deductions`);
* lock waiters: `DeductionTrace.waiting_for_lock` (strategies/base.py), around each lock wait;
* balance cache events: `ledger.balance_cache.count`;
* rate-limited requests and breaker transitions: `ledger.api.counters`;
* balance loss and the breaker's current state: read at scrape time (`SharedStateCollector`),
  from the audit and from Redis, because they are facts about the whole ledger, not about
  what one process did.

Under gunicorn, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, see
gunicorn.conf.py) makes every worker write its values to files that `/metrics` sums, so one
scrape of an instance reports all of its workers. Never pass `registry=` here: in that mode the
default registry is what the files are written for, and a second registry would export twice.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ParamSpec

from django import db
from django.conf import settings
from django.core.cache import cache
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample
from redis.exceptions import LockError, RedisError

if TYPE_CHECKING:
    from ledger.models import DeductionAttempt
    from ledger.services import AuditLine

logger = logging.getLogger(__name__)

# From an uncontended process lock (~10 µs) to a Redis lock wait that timed out (5 s) and a
# deduction queued behind a row lock for DB_LOCK_TIMEOUT_S (10 s).
SECONDS_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

DEDUCTIONS = Counter(
    "ledger_deductions_total",
    "Deduction attempts recorded by the ledger, by strategy and outcome.",
    ["strategy", "outcome"],
)
DEDUCTION_DURATION = Histogram(
    "ledger_deduction_duration_seconds",
    "Duration of a deduction inside the ledger (strategy and recording), by strategy and outcome.",
    ["strategy", "outcome"],
    buckets=SECONDS_BUCKETS,
)
LOCK_WAIT = Histogram(
    "ledger_lock_wait_seconds",
    "Time a deduction waited for its lock (process mutex, row lock, Redis lock) before it got it.",
    ["strategy"],
    buckets=SECONDS_BUCKETS,
)
RETRIES = Counter(
    "ledger_deduction_retries_total",
    "Optimistic retries (re-reads after a version conflict), by strategy.",
    ["strategy"],
)
LOCK_WAITERS = Gauge(
    "ledger_lock_waiters",
    "Deductions waiting for a lock right now, by strategy.",
    ["strategy"],
    # The sum over the workers that are alive: a dead worker waits for nothing.
    multiprocess_mode="livesum",
)
BALANCE_CACHE_EVENTS = Counter(
    "ledger_balance_cache_events_total",
    "Outcomes of the cached balance reads and of publishing committed balances (ledger.balance_cache).",
    ["event"],
)
RATE_LIMITED = Counter(
    "ledger_rate_limited_requests_total",
    "API requests refused with 429, by rate-limit group.",
    ["group"],
)
BREAKER_TRANSITIONS = Counter(
    "ledger_circuit_breaker_transitions_total",
    "Circuit breaker state changes, counted by the process that made them.",
    ["name", "from_state", "to_state"],
)

P = ParamSpec("P")


@functools.cache
def _deduction_series(strategy: str, outcome: str) -> tuple:
    # labels() validates and converts on every call; a deduction needs the same pair again and again.
    return DEDUCTIONS.labels(strategy, outcome), DEDUCTION_DURATION.labels(strategy, outcome)


@functools.cache
def _strategy_series(metric: Counter | Gauge | Histogram, strategy: str):
    return metric.labels(strategy)


def lock_waiters(strategy: str) -> Gauge:
    return _strategy_series(LOCK_WAITERS, strategy)


def observe_deduction(attempt: DeductionAttempt) -> None:
    """Count one recorded attempt: outcome, duration, lock wait, retries, as the record says."""
    outcome = getattr(attempt.outcome, "value", attempt.outcome)
    counted, timed = _deduction_series(attempt.strategy, outcome)
    counted.inc()
    timed.observe(attempt.duration_us / 1_000_000)
    if attempt.lock_wait_us is not None:
        _strategy_series(LOCK_WAIT, attempt.strategy).observe(attempt.lock_wait_us / 1_000_000)
    if attempt.retries:
        _strategy_series(RETRIES, attempt.strategy).inc(attempt.retries)


def counts_deductions(deduct: Callable[P, DeductionAttempt]) -> Callable[P, DeductionAttempt]:
    """Observe the attempt `deduct` returns: it returns the recorded attempt for every outcome,
    so each attempt is counted exactly once, from the same values the database holds."""

    @functools.wraps(deduct)
    def counted(*args: P.args, **kwargs: P.kwargs) -> DeductionAttempt:
        attempt = deduct(*args, **kwargs)
        observe_deduction(attempt)
        return attempt

    return counted


def initialise(*, strategies: Iterable[str], outcomes: Iterable[str]) -> None:
    """Create the deduction counters at 0, so rates and ratios exist before the first attempt."""
    outcomes = list(outcomes)
    for strategy in strategies:
        for outcome in outcomes:
            DEDUCTIONS.labels(strategy, outcome)


# Reading the metrics back (the live panel, /metrics)


def multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def scope() -> str:
    """Whose counts `instance_registry` holds, in words for the live panel."""
    if multiprocess():
        from ledger.services import current_instance_id

        return f"instance {current_instance_id()}, all its worker processes"
    return "this process only (PROMETHEUS_MULTIPROC_DIR is not set)"


class InstanceCollector(MultiProcessCollector):
    """prometheus_client's multiprocess collector, minus the files no worker has sized yet.

    A worker creates each of its files and only then gives it its size, so a scrape at that moment
    finds 0 bytes and prometheus_client 0.26 fails the whole scrape (struct.error); a worker killed
    at that moment leaves the empty file for good (client_python issue #1199, fixed by an unmerged
    pull request). An empty file holds no value yet: leaving it out loses nothing.
    """

    def collect(self):
        return self.merge([path for path in glob.glob(os.path.join(self._path, "*.db")) if _sized(path)])


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False  # removed meanwhile (a dead worker's live gauges)


def instance_registry() -> CollectorRegistry:
    """This instance's metrics: every worker's files summed under gunicorn, else this process's."""
    if not multiprocess():
        return REGISTRY
    registry = CollectorRegistry()
    InstanceCollector(registry)
    return registry


def samples(name: str, *, registry: CollectorRegistry | None = None) -> list[Sample]:
    """Current samples of one metric family (e.g. "ledger_lock_waiters") of this instance."""
    registry = registry or instance_registry()
    return [sample for family in registry.collect() if family.name == name for sample in family.samples]


def exposition() -> bytes:
    """The text `/metrics` answers: this instance's metrics, then the ledger-wide ones."""
    shared = CollectorRegistry(auto_describe=False)
    shared.register(SharedStateCollector())
    return generate_latest(instance_registry()) + generate_latest(shared)


# Balance loss and breaker state: facts about the whole ledger, read at scrape time.

AUDIT_KEY = "ledger:metrics:balance-loss"
AUDIT_REFRESH_LOCK = "ledger:metrics:balance-loss-refresh"
AUDIT_THREAD = "balance-loss-audit"


def audit_and_publish() -> list[AuditLine]:
    """Audit every account and store the balance loss, attributed to the strategies that wrote to
    each account, in Redis, where every instance's `/metrics` reads it: one audit serves the fleet.
    Returns the audit's lines; a Redis failure only costs the publication (logged)."""
    from ledger.services import audit, balance_loss_by_writers

    audited_at, started = time.time(), time.perf_counter()
    lines = audit()
    report = {
        "audited_at": audited_at,
        "duration_s": time.perf_counter() - started,
        "accounts": len(lines),
        "groups": [group._asdict() for group in balance_loss_by_writers(lines)],
    }
    try:
        cache.set(AUDIT_KEY, report, timeout=None)
    except RedisError:
        logger.warning("balance loss not published for /metrics", exc_info=True)
    return lines


def refresh_balance_loss() -> dict | None:
    """The stored audit report. If it is older than METRICS_AUDIT_INTERVAL_S and no other process
    is auditing (a Redis lock: at most one audit per interval, fleet-wide), a new audit starts: in
    a thread of its own, so that a scrape never waits for it (it takes seconds on millions of
    attempts) and the next scrape shows it; only when nothing is stored yet does this scrape wait."""
    report = cache.get(AUDIT_KEY)
    interval = settings.METRICS_AUDIT_INTERVAL_S
    if interval <= 0 or (report is not None and time.time() - report["audited_at"] < interval):
        return report
    # Not thread-local: the audit's thread releases what this thread acquired.
    lock = cache.lock(AUDIT_REFRESH_LOCK, timeout=max(interval, 60), thread_local=False)
    if not lock.acquire(blocking=False):
        return report  # another process is auditing: serve the last result meanwhile
    if report is None:
        _audit_and_release(lock)
        return cache.get(AUDIT_KEY)
    threading.Thread(target=_audit_in_thread, args=(lock,), name=AUDIT_THREAD, daemon=True).start()
    return report


def _audit_and_release(lock) -> None:
    # If the audit fails (database down), the lock stays until its TTL ends: the fleet then retries
    # once per TTL, not at every scrape of every instance.
    audit_and_publish()
    with contextlib.suppress(LockError):  # an audit longer than the lock's TTL lost it: harmless
        lock.release()


def _audit_in_thread(lock) -> None:
    try:
        _audit_and_release(lock)
    except Exception:  # nobody waits for this thread: say why the figures are getting old
        logger.exception("balance loss not refreshed for /metrics")
    finally:
        db.connection.close()  # this thread's own connection


class SharedStateCollector:
    """Balance loss (from the audit, refreshed here at most once per interval across all
    instances) and the circuit breaker's state (pybreaker's, in Redis). Every instance exports
    the same values: aggregate them with max, never sum."""

    def collect(self):
        yield from self._balance_loss()
        yield from self._breaker_state()

    def _balance_loss(self):
        try:
            report = refresh_balance_loss()
        except Exception:  # a failed audit (database down) must not fail the whole scrape
            logger.exception("balance loss not refreshed for /metrics")
            try:
                report = cache.get(AUDIT_KEY)
            except RedisError:
                return
        if report is None:
            return
        loss = GaugeMetricFamily(
            "ledger_balance_loss_minor_units",
            "Audit: expected − actual balance (minor units) summed over the accounts written by the"
            " strategies in `strategy` (joined with +; none: no deduction wrote them);"
            " safe: every one of them is safe across processes.",
            labels=["strategy", "safe"],
        )
        accounts = GaugeMetricFamily(
            "ledger_balance_loss_accounts",
            "Audit: accounts whose balance does not match their records, by the strategies that wrote to them.",
            labels=["strategy", "safe"],
        )
        for group in report["groups"]:
            labels = [group["strategy"], str(group["safe"]).lower()]
            loss.add_metric(labels, group["balance_loss"])
            accounts.add_metric(labels, group["accounts"])
        yield loss
        yield accounts
        yield GaugeMetricFamily(
            "ledger_audit_timestamp_seconds", "When the audit behind the balance loss ran (Unix time).",
            value=report["audited_at"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "ledger_audit_duration_seconds", "How long that audit took.", value=report["duration_s"]
        )
        yield GaugeMetricFamily("ledger_audit_accounts", "Accounts that audit checked.", value=report["accounts"])

    def _breaker_state(self):
        from ledger.api.breaker import BREAKER_STATES, database_breaker

        try:
            breaker = database_breaker()
            current = breaker.state
        except RedisError:
            logger.warning("circuit breaker state not read for /metrics", exc_info=True)
            return
        state = GaugeMetricFamily(
            "ledger_circuit_breaker_state",
            "1 for the circuit breaker's current state (shared by every instance through Redis), 0 for the others.",
            labels=["name", "state"],
        )
        for name in BREAKER_STATES:
            state.add_metric([breaker.name, name], float(name == current))
        yield state
