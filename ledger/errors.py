"""Named domain errors. The API maps them to status codes in one place, the CLI to CommandError."""

from __future__ import annotations

from ledger.models import Outcome


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InvalidRequest(LedgerError):
    """Bad input to a service, with the field it concerns (`field`) for field-level messages."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownStrategy(InvalidRequest):
    def __init__(self, name: str, valid: list[str]) -> None:
        super().__init__("strategy", f"unknown strategy {name!r}; valid names: {', '.join(valid)}")
        self.name = name
        self.valid = valid


class AccountNotFound(LedgerError):
    def __init__(self, account_id: int) -> None:
        super().__init__(f"account {account_id} does not exist")
        self.account_id = account_id


class DeductionRefused(LedgerError):
    """A deduction that ended without moving money; `outcome` is what gets recorded."""

    outcome: Outcome


class InsufficientFunds(DeductionRefused):
    outcome = Outcome.INSUFFICIENT_FUNDS

    def __init__(self, *, balance: int, amount: int) -> None:
        super().__init__(f"balance {balance} is less than the amount {amount}")


class OptimisticConflict(DeductionRefused):
    outcome = Outcome.CONFLICT


class LockTimeout(DeductionRefused):
    outcome = Outcome.LOCK_TIMEOUT


class IdempotencyKeyReused(LedgerError):
    """An idempotency key already recorded for a deduction with a different request."""

    def __init__(self, key: str, differences: dict[str, tuple[object, object]]) -> None:
        changed = ", ".join(f"{name} {was!r} → {now!r}" for name, (was, now) in differences.items())
        super().__init__(f"idempotency key {key!r} was already used for a different deduction ({changed})")
        self.key = key
        self.differences = differences


class RequestIdReused(LedgerError):
    """A request id that already names a recorded deduction attempt (request ids are unique)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request id {request_id!r} already names a recorded deduction; send a new one per deduction")
        self.request_id = request_id


class ClusterError(LedgerError):
    """`manage.py cluster` could not start, inspect or stop the local multi-instance deployment."""
