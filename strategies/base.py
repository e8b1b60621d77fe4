"""The strategy contract: what a deduction strategy is, and the trace it fills in.

A strategy gets a `DeductionTrace` (what to deduct, from which account, plus the
timeline it must fill in) and either

* moves the money and calls `trace.succeed(...)` *inside the transaction that changes
  the balance*, so the success record commits or rolls back with the money, or
* raises a `ledger.errors.DeductionRefused` (insufficient funds, conflict, lock timeout).

The service (`ledger.services.deduct`) records every other outcome afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from ledger import metrics
from ledger.errors import AccountNotFound, InsufficientFunds
from ledger.models import Account

if TYPE_CHECKING:
    from prometheus_client import Gauge


@dataclass
class DeductionTrace:
    """What one deduction attempt did and when; becomes a `DeductionAttempt` row."""

    account_id: int
    amount: int
    think_ms: int = 0
    # Called between read and write after the think delay. Tests pass a barrier's wait()
    # here to force an exact interleaving instead of hoping a sleep produces one.
    after_read: Callable[[], None] | None = None
    # Set by the service: saves the success record in the strategy's open transaction.
    on_success: Callable[[DeductionTrace], None] | None = None

    started_at: datetime = field(default_factory=timezone.now)
    _t0: float = field(default_factory=time.perf_counter)
    balance_before: int | None = None
    balance_after: int | None = None
    version_before: int | None = None
    version_after: int | None = None
    retries: int = 0
    lock_wait_s: float | None = None
    lock_acquired_at: datetime | None = None
    read_at: datetime | None = None
    written_at: datetime | None = None
    lock_expired: bool = False
    events: list[dict] = field(default_factory=list)
    succeeded: bool = False
    _lock_waiters: Gauge | None = field(default=None, repr=False)  # counts this attempt while it waits

    def now(self) -> datetime:
        """Wall-clock time derived from one monotonic clock, so marks never go backwards."""
        return self.started_at + timedelta(seconds=time.perf_counter() - self._t0)

    def elapsed_us(self) -> int:
        return int((time.perf_counter() - self._t0) * 1_000_000)

    def event(self, name: str, **details: object) -> datetime:
        self.events.append({"t_us": self.elapsed_us(), "event": name, **details})
        return self.now()

    @contextmanager
    def waiting_for_lock(self, strategy: str) -> Iterator[float]:
        """Count this attempt among `strategy`'s lock waiters (the `ledger_lock_waiters` gauge)
        from now until `lock_acquired`, or until the block ends if the lock never came.
        Yields the perf_counter() the wait started at, for `lock_acquired`."""
        self._lock_waiters = metrics.lock_waiters(strategy)
        self._lock_waiters.inc()
        try:
            yield time.perf_counter()
        finally:
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        if self._lock_waiters is not None:
            self._lock_waiters.dec()
            self._lock_waiters = None

    def lock_acquired(self, waited_from: float) -> None:
        """Mark the lock as held; `waited_from` is the perf_counter() taken before waiting."""
        self.lock_wait_s = time.perf_counter() - waited_from
        self._stop_waiting()
        self.lock_acquired_at = self.event("lock_acquired", wait_us=int(self.lock_wait_s * 1_000_000))

    def read(self, balance: int, version: int) -> None:
        self.balance_before, self.version_before = balance, version
        self.read_at = self.event("read", balance=balance, version=version)

    def think(self) -> None:
        """The teaching delay between read and write (and the tests' interleaving hook)."""
        if self.think_ms:
            time.sleep(self.think_ms / 1000)
        if self.after_read is not None:
            self.after_read()

    def retry(self, reason: str) -> None:
        self.retries += 1
        self.event("retry", reason=reason)

    def succeed(self, *, balance_before: int, balance_after: int, version_before: int, version_after: int) -> None:
        """Mark the write and record the success; call it inside the balance's transaction."""
        self.balance_before, self.balance_after = balance_before, balance_after
        self.version_before, self.version_after = version_before, version_after
        self.written_at = self.event("written", balance=balance_after, version=version_after)
        self.succeeded = True
        if self.on_success is not None:
            self.on_success(self)


class Strategy:
    """A way to deduct money from a balance under concurrency.

    Subclasses set `name` (kebab-case, the public identifier), `safe_across_processes`,
    write a one-paragraph docstring (technique, cost, how it fails: the UI and README
    show it) and implement `deduct`.
    """

    name: ClassVar[str]
    safe_across_processes: ClassVar[bool]

    def deduct(self, trace: DeductionTrace) -> None:
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        return " ".join((cls.__doc__ or "").split())


class _AccountStatements:
    """The account statements of the strategies, spelled once per database vendor.

    They could be ORM calls (the docstrings below give the ORM spelling), but the ORM
    compiles a query on every call: ~250 µs of CPU per statement on our 2-core machine,
    most of a deduction, and for the correct strategies it runs while the account's row
    lock is held. Profiled and measured in BENCHMARKS.md.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        def q(name: str) -> str:
            return connection.ops.quote_name(name)

        account, balance, version, updated_at = q(Account._meta.db_table), q("balance"), q("version"), q("updated_at")
        self.read = f"SELECT {balance}, {version} FROM {account} WHERE {q('id')} = %s"
        # SQLite has no row locks: its BEGIN IMMEDIATE transaction already holds the database.
        self.read_for_update = self.read + (" FOR UPDATE" if connection.features.has_select_for_update else "")
        self.write = f"UPDATE {account} SET {balance} = %s, {version} = %s, {updated_at} = %s WHERE {q('id')} = %s"
        self.write_if_version = f"{self.write} AND {version} = %s"
        self.deduct_in_place = (
            f"UPDATE {account} SET {balance} = {balance} - %s, {version} = {version} + 1, {updated_at} = %s"
            f" WHERE {q('id')} = %s AND {balance} >= %s"
        )


_statements: dict[str, _AccountStatements] = {}


def _connection_and_statements() -> tuple[BaseDatabaseWrapper, _AccountStatements]:
    connection = connections[DEFAULT_DB_ALIAS]  # one thread-local lookup per call, not one per use
    statements = _statements.get(connection.vendor)
    if statements is None:
        statements = _statements.setdefault(connection.vendor, _AccountStatements(connection))
    return connection, statements


def read_balance(account_id: int, *, for_update: bool = False) -> tuple[int, int]:
    """(balance, version) of an account; `for_update` locks the row until the transaction ends.

    ORM: Account.objects.select_for_update().values_list("balance", "version").get(pk=account_id)
    """
    connection, sql = _connection_and_statements()
    with connection.cursor() as cursor:
        cursor.execute(sql.read_for_update if for_update else sql.read, [account_id])
        row = cursor.fetchone()
    if row is None:
        raise AccountNotFound(account_id)
    return row


def read_and_check(trace: DeductionTrace, *, lock_wait_started: float | None = None) -> tuple[int, int]:
    """Read balance and version, record the read, and refuse if the balance does not cover
    the amount. With `lock_wait_started` (the perf_counter() the wait began at) the read is
    SELECT ... FOR UPDATE: it takes the row lock, and the trace marks when it was acquired."""
    balance, version = read_balance(trace.account_id, for_update=lock_wait_started is not None)
    if lock_wait_started is not None:
        trace.lock_acquired(lock_wait_started)
    trace.read(balance, version)
    if balance < trace.amount:
        raise InsufficientFunds(balance=balance, amount=trace.amount)
    return balance, version


def write_balance(account_id: int, *, balance: int, version: int, expected_version: int | None = None) -> bool:
    """Write a computed balance and version; with `expected_version`, only if it still matches.

    ORM: Account.objects.filter(pk=account_id, version=expected_version).update(balance=..., version=...)
    """
    connection, sql = _connection_and_statements()
    params = [balance, version, connection.ops.adapt_datetimefield_value(timezone.now()), account_id]
    with connection.cursor() as cursor:
        if expected_version is None:
            cursor.execute(sql.write, params)
        else:
            cursor.execute(sql.write_if_version, [*params, expected_version])
        return cursor.rowcount == 1


def deduct_in_place(account_id: int, amount: int) -> bool:
    """`balance = balance - amount WHERE balance >= amount`: one statement, no prior read.

    ORM: Account.objects.filter(pk=account_id, balance__gte=amount)
             .update(balance=F("balance") - amount, version=F("version") + 1)
    """
    connection, sql = _connection_and_statements()
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql.deduct_in_place, [amount, now, account_id, amount])
        return cursor.rowcount == 1


def is_lock_timeout(error: DatabaseError) -> bool:
    """MySQL's lock wait timeout (1205) or SQLite's busy timeout ('database is locked')."""
    code = error.args[0] if error.args else None
    return code == 1205 or (isinstance(code, str) and "database is locked" in code)
