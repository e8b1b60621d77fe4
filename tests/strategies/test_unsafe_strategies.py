"""The unsafe strategies must visibly lose money: that is the lesson."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from django.db import connection, connections

from ledger import services
from ledger.models import Account, Outcome
from tests.support import run_concurrently


@pytest.mark.django_db(transaction=True)
def test_no_lock_loses_an_update_when_two_requests_read_the_same_balance(make_account):
    account = make_account(balance=1_000)
    both_have_read = threading.Barrier(2)

    attempts = run_concurrently(
        2,
        lambda _: services.deduct(
            account_id=account.pk, amount=100, strategy="no-lock", after_read=lambda: both_have_read.wait(10)
        ),
    )
    assert [a.outcome for a in attempts] == [Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    assert {a.version_before for a in attempts} == {0}  # both read version 0: a lost update
    account.refresh_from_db()
    assert account.balance == 900  # 200 approved, 100 taken
    [line] = services.audit(account_ids=[account.pk])
    assert line.balance_loss == -100 and not line.ok


@pytest.mark.django_db(transaction=True)
def test_mutex_holds_inside_one_process(make_account):
    account = make_account(balance=100_000)

    def deduct_twenty(_: int) -> None:
        for _ in range(20):
            services.deduct(account_id=account.pk, amount=10, strategy="mutex")

    run_concurrently(8, deduct_twenty)
    [line] = services.audit(account_ids=[account.pk])
    assert line.ok
    assert Account.objects.get(pk=account.pk).balance == 100_000 - 8 * 20 * 10


def _deduct_in_child(account_id: int, both_have_read, outcomes) -> None:
    try:
        attempt = services.deduct(
            account_id=account_id, amount=100, strategy="mutex", after_read=lambda: both_have_read.wait(10)
        )
        outcomes.put(attempt.outcome)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_mutex_loses_across_two_processes(make_account):
    """Each process has its own lock, so both read the same balance and one write is lost."""
    account = make_account(balance=1_000)
    context = multiprocessing.get_context("fork")
    both_have_read, outcomes = context.Barrier(2), context.Queue()
    connections.close_all()  # children must open their own connections
    children = [context.Process(target=_deduct_in_child, args=(account.pk, both_have_read, outcomes)) for _ in "ab"]
    for child in children:
        child.start()
    results = [outcomes.get(timeout=30) for _ in children]
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0, 0]
    assert results == [Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    account.refresh_from_db()
    assert account.balance == 900
    [line] = services.audit(account_ids=[account.pk])
    assert line.balance_loss == -100
