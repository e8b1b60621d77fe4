from __future__ import annotations

import threading

from django.conf import settings

from ledger.errors import LockTimeout
from strategies.base import DeductionTrace, Strategy
from strategies.no_lock import read_compute_write
from strategies.registry import register

_locks: dict[int, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(account_id: int) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(account_id, threading.Lock())


@register
class Mutex(Strategy):
    """Runs the naive read-check-write while holding a per-account threading.Lock in this
    process's memory. Cheap and correct while every request for an account is served by
    one process; as soon as there are two gunicorn workers, two instances or
    `attack --processes 2`, each process has its own lock, both read the same balance, and
    updates are lost exactly as with no lock. The classic single-machine lock the seed
    replaced with a distributed one."""

    name = "mutex"
    safe_across_processes = False

    def deduct(self, trace: DeductionTrace) -> None:
        lock = _lock_for(trace.account_id)
        with trace.waiting_for_lock(self.name) as waited_from:
            if not lock.acquire(timeout=settings.LEDGER_LOCK_WAIT_S):
                raise LockTimeout(f"process lock not acquired within {settings.LEDGER_LOCK_WAIT_S} s")
        try:
            trace.lock_acquired(waited_from)
            read_compute_write(trace)
        finally:
            lock.release()
