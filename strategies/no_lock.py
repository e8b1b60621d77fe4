from __future__ import annotations

from django.db import transaction

from strategies.base import DeductionTrace, Strategy, read_and_check, write_balance
from strategies.registry import register


def read_compute_write(trace: DeductionTrace) -> None:
    """Read the balance, check it, then blindly write the computed result.

    Shared with `mutex`, which runs exactly this under a process-local lock.
    """
    balance, version = read_and_check(trace)
    trace.think()
    after = balance - trace.amount
    with transaction.atomic():
        # Blind write: whatever happened since our read is overwritten (a lost update).
        # The success record shares the write's transaction so it tells what was written.
        write_balance(trace.account_id, balance=after, version=version + 1)
        trace.succeed(balance_before=balance, balance_after=after, version_before=version, version_after=version + 1)


@register
class NoLock(Strategy):
    """Reads the balance, checks it, and writes the computed result back in a separate
    statement, with nothing in between to stop another request doing the same. It costs
    nothing, and it is wrong: two requests that read the same balance both succeed and the
    second write overwrites the first (a lost update), so money is paid out that the
    balance never shows. Never use it; it is here to be seen losing."""

    name = "no-lock"
    safe_across_processes = False

    def deduct(self, trace: DeductionTrace) -> None:
        read_compute_write(trace)
