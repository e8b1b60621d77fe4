"""Every HTTP status the API answers with, decided here: the one place errors meet HTTP.

Error bodies: {"error": CODE, "detail": MESSAGE} plus, for bad input, "fields":
{FIELD: [MESSAGE, ...]}. Deduction outcomes are not errors: their body is the recorded
attempt, whose "outcome" is machine-readable, with the status of OUTCOME_STATUS.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, IntegrityError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from ledger.api.breaker import CircuitOpen, is_outage
from ledger.errors import (
    AccountNotFound,
    IdempotencyKeyReused,
    InvalidRequest,
    LedgerError,
    RequestIdReused,
    UnknownStrategy,
)
from ledger.models import Outcome

logger = logging.getLogger(__name__)

OUTCOME_STATUS = {
    Outcome.SUCCEEDED: status.HTTP_201_CREATED,
    Outcome.INSUFFICIENT_FUNDS: status.HTTP_402_PAYMENT_REQUIRED,
    Outcome.CONFLICT: status.HTTP_409_CONFLICT,
    Outcome.LOCK_TIMEOUT: status.HTTP_423_LOCKED,
    Outcome.ERROR: status.HTTP_500_INTERNAL_SERVER_ERROR,
}

# Seconds a client should wait before retrying after a database failure (no breaker yet).
DATABASE_RETRY_AFTER_S = 5


# Domain errors: (status, error code). Subclasses first: the first match wins.
_LEDGER_ERRORS: list[tuple[type[LedgerError], int, str]] = [
    (UnknownStrategy, status.HTTP_400_BAD_REQUEST, "unknown_strategy"),
    (InvalidRequest, status.HTTP_400_BAD_REQUEST, "invalid"),
    (AccountNotFound, status.HTTP_404_NOT_FOUND, "not_found"),
    (IdempotencyKeyReused, status.HTTP_422_UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
    (RequestIdReused, status.HTTP_409_CONFLICT, "request_id_reused"),
]

# DRF's own exceptions keep their status; their code names what went wrong.
_DRF_CODES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.ValidationError, "invalid"),
    (exceptions.ParseError, "malformed_request"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.NotAuthenticated, "not_authenticated"),
    (exceptions.AuthenticationFailed, "authentication_failed"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.Throttled, "rate_limited"),
    (CircuitOpen, "circuit_open"),
]


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER: a response for every error the API knows; None means 500."""
    set_rollback()
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)

    if isinstance(exc, LedgerError):
        return _ledger_error(exc)
    if isinstance(exc, exceptions.APIException):
        return _drf_error(exc)
    if isinstance(exc, DatabaseError) and is_outage(exc):
        logger.warning("database unavailable: %s", exc)
        return _error(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "database_unavailable",
            f"the database is unavailable: {type(exc).__name__}",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )
    if isinstance(exc, IntegrityError):
        return _error(status.HTTP_409_CONFLICT, "integrity_conflict", "the request conflicts with stored data")
    return None


def _ledger_error(exc: LedgerError) -> Response:
    code_status, code = next((s, c) for kind, s, c in _LEDGER_ERRORS if isinstance(exc, kind))
    extra: dict = {}
    if isinstance(exc, InvalidRequest):
        extra["fields"] = {exc.field: [exc.message]}
    if isinstance(exc, UnknownStrategy):
        extra["valid"] = exc.valid
    return _error(code_status, code, str(exc), **extra)


def _drf_error(exc: exceptions.APIException) -> Response:
    code = next((c for kind, c in _DRF_CODES if isinstance(exc, kind)), "error")
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(max(1, int(exc.wait)))
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        detail = "; ".join(f"{name}: {' '.join(map(str, messages))}" for name, messages in fields.items())
        return _error(exc.status_code, code, detail, headers=headers, fields=fields)
    return _error(exc.status_code, code, str(exc.detail), headers=headers)


def _error(code_status: int, code: str, detail: str, *, headers: dict | None = None, **extra) -> Response:
    return Response({"error": code, "detail": detail, **extra}, status=code_status, headers=headers)
