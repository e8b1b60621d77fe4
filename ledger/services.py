"""Writes to the ledger. Every balance change in the project goes through this module."""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from ledger import balance_cache, metrics
from ledger.errors import AccountNotFound, DeductionRefused, InvalidRequest
from ledger.models import Account, BalanceAdjustment, DeductionAttempt, Outcome
from ledger.recording import insert_attempt
from strategies import registry
from strategies.base import DeductionTrace, is_lock_timeout, read_balance, write_balance


def current_instance_id() -> str:
    """INSTANCE_ID from the environment, else hostname:pid of *this* process."""
    return settings.INSTANCE_ID or f"{socket.gethostname()}:{os.getpid()}"


def validate_amount(amount: object, *, field: str = "amount", maximum: int | None = None) -> int:
    maximum = settings.LEDGER_MAX_AMOUNT if maximum is None else maximum
    # bool is an int subclass; True must not deduct one cent.
    if type(amount) is not int:
        raise InvalidRequest(field, "must be an integer number of minor units (cents)")
    if amount <= 0:
        raise InvalidRequest(field, "must be greater than zero")
    if amount > maximum:
        raise InvalidRequest(field, f"must be at most {maximum}")
    return amount


def validate_think_ms(think_ms: object) -> int:
    if type(think_ms) is not int or think_ms < 0:
        raise InvalidRequest("think_ms", "must be a non-negative integer number of milliseconds")
    if think_ms and settings.LEDGER_MAX_THINK_MS == 0:
        raise InvalidRequest("think_ms", "think time is disabled on this server (LEDGER_MAX_THINK_MS=0)")
    if think_ms > settings.LEDGER_MAX_THINK_MS:
        raise InvalidRequest("think_ms", f"must be at most {settings.LEDGER_MAX_THINK_MS}")
    return think_ms


def open_account(*, name: str, balance: int) -> Account:
    if not name or not name.strip():
        raise InvalidRequest("name", "must not be empty")
    if type(balance) is not int or balance < 0:
        raise InvalidRequest("balance", "must be a non-negative integer number of minor units (cents)")
    return Account.objects.create(name=name.strip(), balance=balance, opening_balance=balance)


@metrics.counts_deductions
def deduct(
    *,
    account_id: int,
    amount: int,
    strategy: str | None = None,
    think_ms: int = 0,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    attack_run_id: int | None = None,
    after_read: Callable[[], None] | None = None,
) -> DeductionAttempt:
    """Deduct `amount` from an account with the named strategy and record the attempt.

    Returns the recorded `DeductionAttempt` whatever its outcome (succeeded, insufficient
    funds, conflict, lock timeout, error). Raises `InvalidRequest` / `UnknownStrategy` for
    bad input and `AccountNotFound` (nothing to record an attempt against).
    """
    chosen = registry.get(strategy or settings.LEDGER_DEFAULT_STRATEGY)
    validate_amount(amount)
    validate_think_ms(think_ms)
    request_id = request_id or uuid.uuid4().hex

    def attempt_from(trace: DeductionTrace, outcome: Outcome, error: str = "") -> DeductionAttempt:
        return DeductionAttempt(
            account_id=account_id,
            strategy=chosen.name,
            amount=amount,
            think_ms=think_ms,
            outcome=outcome,
            balance_before=trace.balance_before,
            balance_after=trace.balance_after,
            version_before=trace.version_before,
            version_after=trace.version_after,
            retries=trace.retries,
            lock_wait_us=None if trace.lock_wait_s is None else int(trace.lock_wait_s * 1_000_000),
            started_at=trace.started_at,
            lock_acquired_at=trace.lock_acquired_at,
            read_at=trace.read_at,
            written_at=trace.written_at,
            finished_at=trace.now(),
            duration_us=trace.elapsed_us(),
            events=trace.events,
            lock_expired=trace.lock_expired,
            instance_id=current_instance_id(),
            request_id=request_id,
            idempotency_key=idempotency_key,
            attack_run_id=attack_run_id,
            error=error,
        )

    recorded: list[DeductionAttempt] = []

    def record_success(trace: DeductionTrace) -> None:
        attempt = attempt_from(trace, Outcome.SUCCEEDED)
        insert_attempt(attempt)
        recorded.append(attempt)
        _publish_after_commit(account_id, balance=trace.balance_after, version=trace.version_after)

    trace = DeductionTrace(account_id=account_id, amount=amount, think_ms=think_ms, after_read=after_read)
    trace.on_success = record_success
    outcome, error, failed = Outcome.SUCCEEDED, "", False
    try:
        chosen.deduct(trace)
    except AccountNotFound:
        raise
    except DeductionRefused as refused:
        outcome, error = refused.outcome, str(refused)
    except Exception as failure:  # noqa: BLE001 - whatever a strategy hits is an outcome to record
        timed_out = isinstance(failure, DatabaseError) and is_lock_timeout(failure)
        outcome = Outcome.LOCK_TIMEOUT if timed_out else Outcome.ERROR
        error, failed = f"{type(failure).__name__}: {failure}", True

    # A success row saved inside a transaction that then failed to commit does not exist:
    # only trust it when nothing failed, or when the database says it is there.
    if recorded and (not failed or DeductionAttempt.objects.filter(pk=recorded[0].pk).exists()):
        return _annotate_after_success(recorded[0], trace, error)
    trace.event("outcome", outcome=outcome.value, error=error)
    attempt = attempt_from(trace, outcome, error)
    insert_attempt(attempt)
    return attempt


def _annotate_after_success(attempt: DeductionAttempt, trace: DeductionTrace, error: str) -> DeductionAttempt:
    """Add what went wrong after a committed success (found at lock release) to its record."""
    notes = ["the distributed lock expired before it was released"] if trace.lock_expired else []
    if error:
        notes.append(f"after the committed success: {error}")
    if notes:
        attempt.lock_expired, attempt.events, attempt.error = trace.lock_expired, trace.events, "; ".join(notes)
        DeductionAttempt.objects.filter(pk=attempt.pk).update(
            lock_expired=attempt.lock_expired, events=attempt.events, error=attempt.error
        )
    return attempt


def _publish_after_commit(account_id: int, *, balance: int, version: int) -> None:
    """Every balance change ends here: once its transaction commits, its (version, balance)
    replaces the cached balance (ledger.balance_cache).

    After commit, not before: until then the change may still roll back, and readers of the
    cache would see money move that never moved. Publishing the new version rather than
    deleting the key keeps readers hitting, and the versioned compare-and-set means a reader
    holding an older row can never put it back. `robust`: the change has committed, so nothing
    the cache does may turn it into an error.
    """
    transaction.on_commit(
        functools.partial(balance_cache.publish, account_id, version=version, balance=balance), robust=True
    )


def _adjust(*, account_id: int, kind: BalanceAdjustment.Kind, new_balance: Callable[[int], int], note: str):
    with transaction.atomic():
        balance, version = read_balance(account_id, for_update=True)
        after = new_balance(balance)
        write_balance(account_id, balance=after, version=version + 1)
        _publish_after_commit(account_id, balance=after, version=version + 1)
        return BalanceAdjustment.objects.create(
            account_id=account_id,
            kind=kind,
            delta=after - balance,
            balance_before=balance,
            balance_after=after,
            version_before=version,
            version_after=version + 1,
            note=note,
            instance_id=current_instance_id(),
        )


def top_up(*, account_id: int, amount: int, note: str = "") -> BalanceAdjustment:
    """Add money to an account, recorded as a BalanceAdjustment so the audit stays exact."""
    validate_amount(amount)
    return _adjust(
        account_id=account_id, kind=BalanceAdjustment.Kind.TOP_UP, new_balance=lambda b: b + amount, note=note
    )


def reset_balance(*, account_id: int, balance: int, note: str = "") -> BalanceAdjustment:
    """Set an account's balance, recorded as a BalanceAdjustment of the difference."""
    if type(balance) is not int or balance < 0:
        raise InvalidRequest("balance", "must be a non-negative integer number of minor units (cents)")
    return _adjust(account_id=account_id, kind=BalanceAdjustment.Kind.RESET, new_balance=lambda _: balance, note=note)


@dataclass(frozen=True)
class AuditLine:
    account_id: int
    name: str
    opening_balance: int
    adjustments: int
    deducted: int
    expected_balance: int
    balance: int

    @property
    def balance_loss(self) -> int:
        """expected − actual: negative when deductions were approved but not taken."""
        return self.expected_balance - self.balance

    @property
    def ok(self) -> bool:
        return self.balance_loss == 0 and self.balance >= 0


def audit(*, account_ids: list[int] | None = None) -> list[AuditLine]:
    """For each account: opening + adjustments − Σ succeeded deductions must equal the balance.

    One SQL statement, so the balance and the sums come from one consistent snapshot even
    while deductions are running (each correct strategy commits record and balance together).
    """
    zero = Value(0)
    deducted = (
        DeductionAttempt.objects.filter(account=OuterRef("pk"), outcome=Outcome.SUCCEEDED)
        .order_by()
        .values("account")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    adjusted = (
        BalanceAdjustment.objects.filter(account=OuterRef("pk"))
        .order_by()
        .values("account")
        .annotate(total=Sum("delta"))
        .values("total")
    )
    accounts = Account.objects.order_by("pk").annotate(
        deducted=Coalesce(Subquery(deducted), zero), adjusted=Coalesce(Subquery(adjusted), zero)
    )
    if account_ids is not None:
        accounts = accounts.filter(pk__in=account_ids)
    return [
        AuditLine(
            account_id=a.pk,
            name=a.name,
            opening_balance=a.opening_balance,
            adjustments=int(a.adjusted),
            deducted=int(a.deducted),
            expected_balance=a.opening_balance + int(a.adjusted) - int(a.deducted),
            balance=a.balance,
        )
        for a in accounts.values_list("pk", "name", "opening_balance", "balance", "adjusted", "deducted", named=True)
    ]


class LossGroup(NamedTuple):
    """The balance loss of the accounts that the same set of strategies wrote to."""

    strategy: str  # the writers' names joined with "+" (sorted), or "none"
    safe: bool  # every writer is safe across processes: a loss here is a bug, not a lesson
    balance_loss: int
    accounts: int


NO_WRITER = "none"


def balance_loss_by_writers(lines: list[AuditLine]) -> list[LossGroup]:
    """An audit's loss, grouped by the strategies whose succeeded deductions wrote to each account.

    A strategy can only be blamed for accounts it wrote to, and an account written by several
    strategies cannot be split between them, so each account counts once, under the set of its
    writers ("atomic+no-lock"). Every registered strategy appears, at 0 if it lost nothing; sets
    appear only with a loss, so the groups stay few (subsets of the registry) however many
    accounts an attack opens. A loss on an account no deduction wrote to ("none") is a balance
    changed behind the ledger's back: nothing unsafe explains it.
    """
    losing = {line.account_id: line.balance_loss for line in lines if line.balance_loss}
    writers: dict[int, set[str]] = defaultdict(set)
    ids = sorted(losing)
    for start in range(0, len(ids), 500):  # bounded IN lists (SQLite limits query parameters)
        attempts = DeductionAttempt.objects.filter(account_id__in=ids[start : start + 500], outcome=Outcome.SUCCEEDED)
        for account_id, strategy in attempts.order_by().values_list("account_id", "strategy").distinct():
            writers[account_id].add(strategy)
    totals: dict[str, list[int]] = {name: [0, 0] for name in registry.names()}
    for account_id, loss in losing.items():
        total = totals.setdefault("+".join(sorted(writers[account_id])) or NO_WRITER, [0, 0])
        total[0] += loss
        total[1] += 1
    return [
        LossGroup(strategy=key, safe=_all_safe(key), balance_loss=loss, accounts=accounts)
        for key, (loss, accounts) in totals.items()
    ]


def _all_safe(writers: str) -> bool:
    if writers == NO_WRITER:
        return True
    names = registry.names()
    # A strategy no longer registered cannot vouch for itself.
    return all(name in names and registry.get(name).safe_across_processes for name in writers.split("+"))
