from __future__ import annotations

from django.db import transaction

from strategies.base import DeductionTrace, Strategy, read_and_check, write_balance
from strategies.registry import register


@register
class Pessimistic(Strategy):
    """Opens a transaction and reads the account with SELECT ... FOR UPDATE, which locks
    the row until commit; concurrent deductions of the same account queue on that lock
    in the database, so it is correct across any number of processes and instances. The
    cost is the queue: throughput on one hot account is one transaction at a time, and a
    slow holder (or think time) makes everyone wait, up to the database's lock wait
    timeout (recorded as lock_timeout). On SQLite the whole database is the lock
    (BEGIN IMMEDIATE)."""

    name = "pessimistic"
    safe_across_processes = True

    def deduct(self, trace: DeductionTrace) -> None:
        # On SQLite the wait is BEGIN IMMEDIATE, when the transaction starts; on MySQL the SELECT.
        with trace.waiting_for_lock(self.name) as waited_from, transaction.atomic():
            balance, version = read_and_check(trace, lock_wait_started=waited_from)
            trace.think()
            after = balance - trace.amount
            write_balance(trace.account_id, balance=after, version=version + 1)
            trace.succeed(
                balance_before=balance, balance_after=after, version_before=version, version_after=version + 1
            )
