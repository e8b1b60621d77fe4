"""Test helpers: real threads with a barrier start and closed connections; backend markers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from django.conf import settings
from django.db import connection

T = TypeVar("T")


def run_concurrently(count: int, work: Callable[[int], T], *, timeout: float = 60) -> list[T]:
    """Run work(0..count-1) in `count` threads released together; re-raise the first error."""
    start = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            start.wait(timeout=timeout)
            results[index] = work(index)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()  # or teardown hangs on the test database

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"workers still running after {timeout} s")
    if errors:
        raise errors[0]
    return results


def in_thread(work: Callable[[], T], *, timeout: float = 60) -> T:
    """Run work() on a thread of its own (its own database connection) and return its result."""
    return run_concurrently(1, lambda _: work(), timeout=timeout)[0]


def once(work: Callable[[], None]) -> Callable[[], None]:
    """A hook that runs `work` the first time it is called and does nothing afterwards."""
    pending = [work]

    def hook() -> None:
        if pending:
            pending.pop()()

    return hook


def set_lock_timeout(seconds: int) -> None:
    """Lower how long this thread's connection waits for a row or database lock."""
    connection.ensure_connection()
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", [seconds])
    else:
        connection.connection.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")


def mysql_only(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.mysql",
        reason=f"MySQL/MariaDB only: {reason}",
    )
