"""Optimistic locking: compare-and-swap, bounded retries, and retries that see fresh data."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from ledger import services
from ledger.models import Account, Outcome
from strategies.base import read_balance
from tests.support import in_thread, mysql_only, once


def commit_elsewhere(account_id: int) -> None:
    """Change the account's version from another connection, as a concurrent request would."""
    in_thread(lambda: services.top_up(account_id=account_id, amount=1))


@pytest.mark.django_db(transaction=True)
def test_optimistic_records_conflict_after_three_retries(make_account):
    account = make_account(balance=1_000)
    attempt = services.deduct(
        account_id=account.pk, amount=100, strategy="optimistic", after_read=lambda: commit_elsewhere(account.pk)
    )
    assert attempt.outcome == Outcome.CONFLICT
    assert attempt.retries == 3
    assert [e["event"] for e in attempt.events].count("conflict") == 4  # the first try and three retries
    account.refresh_from_db()
    assert account.balance == 1_004 and account.version == 4  # only the four top-ups landed
    assert services.audit(account_ids=[account.pk])[0].ok


@pytest.mark.django_db(transaction=True)
def test_optimistic_retry_sees_the_commit_that_beat_it(make_account):
    account = make_account(balance=1_000)
    attempt = services.deduct(
        account_id=account.pk, amount=100, strategy="optimistic", after_read=once(lambda: commit_elsewhere(account.pk))
    )
    assert attempt.outcome == Outcome.SUCCEEDED
    assert attempt.retries == 1
    assert (attempt.balance_before, attempt.version_before) == (1_001, 1)  # the re-read saw the top-up
    assert Account.objects.get(pk=account.pk).balance == 901


@mysql_only("REPEATABLE READ snapshots are InnoDB behaviour")
@pytest.mark.django_db(transaction=True)
def test_optimistic_retry_reads_fresh_data_even_under_repeatable_read(make_account):
    account = make_account(balance=1_000)
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    try:
        # The classic bug this strategy avoids: inside one REPEATABLE READ transaction a
        # re-read returns the first snapshot, so a retry loop there could never succeed.
        with transaction.atomic():
            assert read_balance(account.pk) == (1_000, 0)
            commit_elsewhere(account.pk)
            assert read_balance(account.pk) == (1_000, 0)  # stale snapshot
        assert read_balance(account.pk) == (1_001, 1)

        attempt = services.deduct(
            account_id=account.pk,
            amount=100,
            strategy="optimistic",
            after_read=once(lambda: commit_elsewhere(account.pk)),
        )
        assert (attempt.outcome, attempt.retries, attempt.version_before) == (Outcome.SUCCEEDED, 1, 2)
    finally:
        connection.close()  # do not hand a REPEATABLE READ session to the next test
