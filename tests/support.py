"""Test helpers: real threads with a barrier start and closed connections; backend markers."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import traceback
from collections.abc import Callable
from typing import TypeVar

import pytest
from django.db import connection, connections

T = TypeVar("T")


def run_concurrently(count: int, work: Callable[[int], T], *, timeout: float = 60, start=None) -> list[T]:
    """Run work(0..count-1) in `count` threads released together; re-raise the first error.

    `start`: a barrier shared with threads elsewhere (other processes), instead of a new one.
    """
    start = start or threading.Barrier(count)
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


def run_in_processes(processes: int, threads: int, work: Callable[[int], T], *, timeout: float = 60) -> list[T]:
    """Run work(0..processes×threads-1) in `threads` threads in each of `processes` forked processes
    (like app instances), all released by one barrier; results must pickle. Re-raise the first error."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(processes * threads)
    results = context.Queue()

    def child(first: int) -> None:
        try:
            results.put(
                ("ok", first, run_concurrently(threads, lambda i: work(first + i), timeout=timeout, start=start))
            )
        except BaseException:
            start.abort()  # never leave the other processes waiting at the barrier
            results.put(("error", first, traceback.format_exc()))

    connections.close_all()  # forked children must not share the parent's database sockets
    children = [context.Process(target=child, args=(n * threads,)) for n in range(processes)]
    for process in children:
        process.start()
    try:
        messages = [results.get(timeout=timeout) for _ in children]
    except queue.Empty:
        raise TimeoutError(f"processes still running after {timeout} s") from None
    finally:
        for process in children:
            process.join(timeout)
    errors = [payload for kind, _, payload in messages if kind == "error"]
    if errors:
        raise AssertionError(f"a forked process failed:\n{errors[0]}")
    return [result for _, _, batch in sorted(messages, key=lambda m: m[1]) for result in batch]


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
        connection.vendor != "mysql",
        reason=f"MySQL/MariaDB only: {reason}",
    )
