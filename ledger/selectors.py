"""Reads from the ledger. Views, the API and the attack's readers call these, never the ORM directly."""

from __future__ import annotations

from dataclasses import dataclass

from ledger import balance_cache
from strategies.base import read_balance


@dataclass(frozen=True)
class BalanceRead:
    """A balance as some reader saw it, with the version it belongs to and where it came from."""

    account_id: int
    balance: int
    version: int
    source: str  # balance_cache.CACHE, DATABASE (a miss, or the cache is off) or FALLBACK (Redis down)


def balance(*, account_id: int) -> BalanceRead:
    """The current balance of an account, for display only: no strategy decides from it.

    Read through the cache-aside layer (ledger.balance_cache): once a balance change has
    committed, no read returns an older version. Raises AccountNotFound.
    """
    amount, version, source = balance_cache.read(account_id, read_balance)
    return BalanceRead(account_id=account_id, balance=amount, version=version, source=source)
