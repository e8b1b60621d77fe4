"""project/db_backends: django-prometheus's database metrics, counted by a cursor class built once."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection
from prometheus_client import REGISTRY

from ledger.models import Account


def value(sample: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(sample, {"alias": "default", "vendor": connection.vendor, **labels}) or 0.0


def failures() -> float:
    return sum(value("django_db_errors_total", type=kind) for kind in ("OperationalError", "ProgrammingError"))


@pytest.mark.django_db
def test_every_statement_is_counted_and_timed_and_failures_are_counted_by_type():
    executed, timed = value("django_db_execute_total"), value("django_db_query_duration_seconds_count")
    many, failed = value("django_db_execute_many_total"), failures()
    table, key = connection.ops.quote_name(Account._meta.db_table), connection.ops.quote_name("id")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.executemany(f"UPDATE {table} SET {key} = {key} WHERE {key} = %s", [(1,), (2,)])
        with pytest.raises(DatabaseError):
            cursor.execute("SELECT * FROM no_such_table")
    assert value("django_db_execute_total") == executed + 4  # executemany counts each parameter set
    assert value("django_db_execute_many_total") == many + 2
    assert value("django_db_query_duration_seconds_count") == timed + 3  # one observation per call
    assert failures() == failed + 1


@pytest.mark.django_db
def test_the_counting_cursor_class_is_built_once_per_connection_kind():
    with connection.cursor() as first, connection.cursor() as second:
        assert type(first.cursor) is type(second.cursor)
        assert type(first.cursor).__name__ == "CountingCursor"
