"""Idempotent deductions: one key, one recorded attempt, money moved at most once.

The guarantee is the database's, not a process's memory. `DeductionAttempt.idempotency_key`
is UNIQUE, and every strategy saves its success record in the same transaction as the
balance change. Two requests with the same key that race (on different gunicorn workers or
instances) may both run a strategy, but only one attempt row can commit: the other's
transaction, balance change included, rolls back with an IntegrityError, and that request
answers with the winner's attempt. The lookup before deducting only makes the common case,
a sequential retry, cheap.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.db import IntegrityError

from ledger import services
from ledger.errors import IdempotencyKeyReused, InvalidRequest, RequestIdReused
from ledger.models import DeductionAttempt
from ledger.recording import idempotency_key_taken
from strategies import registry

MAX_KEY_LENGTH = 200
_VALID_KEY = re.compile(rf"^[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}$")


def scoped_key(*, owner: str, key: str) -> str:
    """The key as stored: scoped to its owner, so two clients can never collide."""
    if not _VALID_KEY.match(key):
        raise InvalidRequest("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters")
    return f"{owner}:{key}"


def client_key(stored: str | None) -> str | None:
    """The key as its client sent it (the stored one without its scope)."""
    return stored.split(":", 1)[1] if stored else None


def deduct_once(
    *,
    account_id: int,
    amount: int,
    strategy: str | None = None,
    think_ms: int = 0,
    request_id: str,
    idempotency_key: str | None,
) -> tuple[DeductionAttempt, bool]:
    """`services.deduct` unless the (scoped) key already has an attempt: (attempt, replayed).

    Raises IdempotencyKeyReused when the key's attempt was for a different deduction, and
    RequestIdReused when the request id already names another attempt.
    """
    requested = {
        "account_id": account_id,
        "amount": services.validate_amount(amount),
        "strategy": registry.get(strategy or settings.LEDGER_DEFAULT_STRATEGY).name,
        "think_ms": services.validate_think_ms(think_ms),
    }
    replay = idempotency_key is not None and idempotency_key_taken(idempotency_key)
    if replay and (previous := _recorded(idempotency_key, requested)):
        return previous, True
    try:
        return services.deduct(**requested, request_id=request_id, idempotency_key=idempotency_key), False
    except IntegrityError:
        # The database refused a second attempt record: another request with this key got
        # there first (our balance change rolled back with our record), or the request id
        # is taken.
        if idempotency_key is not None and (previous := _recorded(idempotency_key, requested)):
            return previous, True
        if DeductionAttempt.objects.filter(request_id=request_id).exists():
            raise RequestIdReused(request_id) from None
        raise


def _recorded(key: str, requested: dict[str, object]) -> DeductionAttempt | None:
    previous = DeductionAttempt.objects.filter(idempotency_key=key).first()
    if previous is None:
        return None
    differences = {
        name: (getattr(previous, name), value) for name, value in requested.items() if getattr(previous, name) != value
    }
    if differences:
        raise IdempotencyKeyReused(client_key(key), differences)
    return previous
