"""Reads from the ledger. Views, the API and the attack's readers call these, never the ORM directly."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.errors import AccountNotFound
from ledger.models import Account


@dataclass(frozen=True)
class BalanceRead:
    """A balance as some reader saw it, with the version it belongs to and where it came from."""

    account_id: int
    balance: int
    version: int
    source: str  # "database" (a cache layer adds "cache" and "fallback")


def balance(*, account_id: int) -> BalanceRead:
    """The current balance of an account (for display only: no strategy decides from it)."""
    try:
        amount, version = Account.objects.values_list("balance", "version").get(pk=account_id)
    except Account.DoesNotExist:
        raise AccountNotFound(account_id) from None
    return BalanceRead(account_id=account_id, balance=amount, version=version, source="database")
