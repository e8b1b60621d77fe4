"""Writing DeductionAttempt rows on the hot path of a deduction (and the key check before one).

`Model.save()` compiles a 24-column INSERT and prepares every value through its field on
each call: ~330 µs of CPU per attempt on our 2-core machine, a quarter of a deduction,
and for the correct strategies it runs while the account's row lock is held (the record
commits with the balance). Here the statement is built once per database vendor and only
the values that need converting (datetimes, JSON) are converted. Measured in BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, Field, JSONField

from ledger.models import DeductionAttempt

Converter = Callable[[BaseDatabaseWrapper, object], object] | None


def _converter(field: Field) -> Converter:
    if isinstance(field, DateTimeField):
        return lambda connection, value: connection.ops.adapt_datetimefield_value(value)
    if isinstance(field, JSONField):
        return lambda connection, value: connection.ops.adapt_json_value(value, field.encoder)
    return None  # integers, strings and booleans go to the driver as they are


class _InsertStatement:
    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        fields = [field for field in DeductionAttempt._meta.concrete_fields if not field.primary_key]
        columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
        table = connection.ops.quote_name(DeductionAttempt._meta.db_table)
        self.sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
        self.columns = [(field.attname, _converter(field)) for field in fields]


_statements: dict[str, _InsertStatement] = {}


def insert_attempt(attempt: DeductionAttempt) -> None:
    """INSERT the attempt (inside the caller's transaction, if any) and set its primary key."""
    connection = connections[DEFAULT_DB_ALIAS]
    statement = _statements.get(connection.vendor)
    if statement is None:
        statement = _statements.setdefault(connection.vendor, _InsertStatement(connection))
    values = [
        getattr(attempt, name) if convert is None else convert(connection, getattr(attempt, name))
        for name, convert in statement.columns
    ]
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, values)
        attempt.pk = cursor.lastrowid
    attempt._state.adding = False
    attempt._state.db = DEFAULT_DB_ALIAS


def idempotency_key_taken(key: str) -> bool:
    """Whether an attempt already carries this (scoped) idempotency key.

    Asked before every API deduction that sends a key (`attack --url` sends one with each): the
    ORM's `filter(...).first()` compiled a query each time, ~0.8 ms of CPU per request on our
    machine; this is one indexed lookup with a fixed statement. A key that is taken is then read
    through the ORM (a replay, the rare case).
    """
    connection = connections[DEFAULT_DB_ALIAS]
    table = connection.ops.quote_name(DeductionAttempt._meta.db_table)
    column = connection.ops.quote_name("idempotency_key")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {table} WHERE {column} = %s", [key])
        return cursor.fetchone() is not None
