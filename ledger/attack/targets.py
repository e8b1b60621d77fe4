"""What an attack fires at. The engine only knows this interface."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, NamedTuple, Protocol

from django.db import connection
from django.db.models import Sum

from ledger import selectors, services
from ledger.errors import AccountNotFound
from ledger.models import Account, AttackRun, DeductionAttempt, Outcome
from strategies import registry

if TYPE_CHECKING:
    from ledger.attack.engine import AttackPlan


READ = "read"  # Sample.outcome of a balance read


class Sample(NamedTuple):
    """One request as the attacking client saw it."""

    outcome: str  # an Outcome value, READ for a balance read, or "rate_limited" / "unavailable" over HTTP
    latency_s: float
    retries: int
    lock_wait_s: float | None
    # The version the client saw committed: a read's, or a succeeded deduction's version_after.
    version: int | None = None
    source: str | None = None  # reads: where the balance came from (ledger.balance_cache.CACHE, ...)
    stale: bool = False  # reads: older than a version this client had already seen committed


class Target(Protocol):
    label: str

    def check(self, plan: AttackPlan) -> None:
        """Refuse a plan this target cannot run (unknown strategy...) before anything is created."""

    def prepare(self, plan: AttackPlan) -> tuple[int, int]:
        """Create (or look up) an attacked account; return its id and starting balance.

        Called once per account of the plan (`AttackPlan.accounts`), each time for a fresh one."""

    def local_account_id(self, account_id: int) -> int | None:
        """The account's id in this process's database, if it lives there."""

    def fire(self, *, account_id: int, plan: AttackPlan, run_id: int) -> Sample:
        """One deduction; called concurrently from worker threads."""

    def read(self, *, account_id: int) -> Sample:
        """One balance read (outcome READ, with the version and source it saw); called concurrently."""

    def worker_finished(self) -> None:
        """Called by each worker thread when it stops (release per-thread resources)."""

    def balance(self, account_id: int) -> int: ...

    def expected_balance(self, run_id: int, initial_balance: int, samples: list[Sample], plan: AttackPlan) -> int:
        """What the run's accounts should hold together, starting from their summed balances."""


def fresh_account_name(strategy: str) -> str:
    return f"attack-{strategy}-{uuid.uuid4().hex[:12]}"


class InProcessTarget:
    """Calls ledger.services.deduct directly, in this process and its forked children."""

    label = AttackRun.IN_PROCESS

    def check(self, plan: AttackPlan) -> None:
        registry.get(plan.strategy)

    def prepare(self, plan: AttackPlan) -> tuple[int, int]:
        if plan.account_id is not None:
            try:
                return plan.account_id, Account.objects.values_list("balance", flat=True).get(pk=plan.account_id)
            except Account.DoesNotExist:
                raise AccountNotFound(plan.account_id) from None
        account = services.open_account(name=fresh_account_name(plan.strategy), balance=plan.balance)
        return account.pk, account.balance

    def local_account_id(self, account_id: int) -> int | None:
        return account_id

    def fire(self, *, account_id: int, plan: AttackPlan, run_id: int) -> Sample:
        started = time.perf_counter()
        attempt = services.deduct(
            account_id=account_id,
            amount=plan.amount,
            strategy=plan.strategy,
            think_ms=plan.think_ms,
            attack_run_id=run_id,
        )
        lock_wait_s = None if attempt.lock_wait_us is None else attempt.lock_wait_us / 1_000_000
        version = attempt.version_after if attempt.outcome == Outcome.SUCCEEDED else None
        return Sample(attempt.outcome, time.perf_counter() - started, attempt.retries, lock_wait_s, version)

    def read(self, *, account_id: int) -> Sample:
        started = time.perf_counter()
        seen = selectors.balance(account_id=account_id)
        return Sample(READ, time.perf_counter() - started, 0, None, seen.version, seen.source)

    def worker_finished(self) -> None:
        connection.close()

    def balance(self, account_id: int) -> int:
        return Account.objects.values_list("balance", flat=True).get(pk=account_id)

    def expected_balance(self, run_id: int, initial_balance: int, samples: list[Sample], plan: AttackPlan) -> int:
        """Initial balance minus what the ledger recorded as succeeded for this run."""
        recorded = DeductionAttempt.objects.filter(attack_run_id=run_id, outcome=Outcome.SUCCEEDED)
        return initial_balance - (recorded.aggregate(total=Sum("amount"))["total"] or 0)
