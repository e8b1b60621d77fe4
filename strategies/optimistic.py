from __future__ import annotations

import random
import time

from django.conf import settings
from django.db import transaction

from ledger.errors import OptimisticConflict
from strategies.base import DeductionTrace, Strategy, read_and_check, write_balance
from strategies.registry import register


@register
class Optimistic(Strategy):
    """Reads balance and version without locking, then writes with a compare-and-swap
    (UPDATE ... WHERE version = the version read). If another request changed the row in
    between, nothing is written and it re-reads and tries again, up to 3 retries with a
    random 0-10 ms backoff, then gives up with outcome conflict. No lock is held while
    thinking, so readers never queue; under heavy contention on one account most tries
    collide, which costs retries and some refused requests but never money."""

    name = "optimistic"
    safe_across_processes = True

    def deduct(self, trace: DeductionTrace) -> None:
        max_retries = settings.LEDGER_OPTIMISTIC_MAX_RETRIES
        while True:
            # The read runs in autocommit, outside any transaction, so every retry sees the
            # latest committed row. Inside one REPEATABLE READ transaction a re-read would
            # return the first snapshot again and every retry would conflict.
            balance, version = read_and_check(trace)
            trace.think()
            after = balance - trace.amount
            with transaction.atomic():
                if write_balance(trace.account_id, balance=after, version=version + 1, expected_version=version):
                    trace.succeed(
                        balance_before=balance, balance_after=after, version_before=version, version_after=version + 1
                    )
                    return
            trace.event("conflict", version=version)
            if trace.retries >= max_retries:
                raise OptimisticConflict(f"version changed under every one of {max_retries + 1} tries")
            trace.retry("version changed")
            # Random backoff so the colliding requests do not collide again in lockstep.
            time.sleep(random.uniform(0, settings.LEDGER_OPTIMISTIC_BACKOFF_MAX_MS / 1000))
