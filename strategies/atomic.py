from __future__ import annotations

import time

from django.db import transaction

from ledger.errors import InsufficientFunds
from strategies.base import DeductionTrace, Strategy, deduct_in_place, read_balance
from strategies.registry import register


@register
class Atomic(Strategy):
    """One conditional statement does the check and the write together:
    UPDATE ... SET balance = balance - x, version = version + 1 WHERE id = ? AND balance >= x.
    The database applies it atomically under its own short row lock, so there is no read
    to go stale, nothing to retry and no lock held across a round trip: the cheapest
    correct strategy. It fits when the rule is a simple arithmetic condition; it cannot
    run arbitrary code between read and write (think time does not apply)."""

    name = "atomic"
    safe_across_processes = True

    def deduct(self, trace: DeductionTrace) -> None:
        with transaction.atomic():
            started = time.perf_counter()
            if deduct_in_place(trace.account_id, trace.amount):
                trace.event("updated", statement_us=int((time.perf_counter() - started) * 1_000_000))
                # Our UPDATE holds the row lock until commit, so this read sees our write.
                after, version = read_balance(trace.account_id)
                trace.succeed(
                    balance_before=after + trace.amount, balance_after=after, version_before=version - 1,
                    version_after=version,
                )  # fmt: skip
                return
        balance, version = read_balance(trace.account_id)
        trace.read(balance, version)
        raise InsufficientFunds(balance=balance, amount=trace.amount)
