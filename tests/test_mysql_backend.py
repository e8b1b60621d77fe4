"""project/db_backends/mysql: atomic() opens transactions with START TRANSACTION (one round trip less)."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from ledger import services
from ledger.models import Account
from tests.support import in_thread, mysql_only

pytestmark = [mysql_only("the MySQL backend"), pytest.mark.django_db(transaction=True)]


class CountingConnection:
    """The driver connection, counting what would be a round trip of transaction control."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, []

    def autocommit(self, on: bool) -> None:
        if self.real.get_autocommit() != on:  # mysqlclient skips the query when nothing changes
            self.calls.append(f"SET autocommit={int(on)}")
        self.real.autocommit(on)

    def commit(self) -> None:
        self.calls.append("COMMIT")
        self.real.commit()

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_atomic_commits_with_start_transaction_and_never_toggles_autocommit(make_account):
    account = make_account(balance=1_000)
    connection.ensure_connection()
    counting = connection.connection = CountingConnection(connection.connection)
    try:
        with transaction.atomic():
            assert counting.real.get_autocommit()  # the session stays in autocommit mode
            Account.objects.filter(pk=account.pk).update(balance=900)
            assert in_thread(lambda: Account.objects.get(pk=account.pk).balance) == 1_000  # not committed yet
    finally:
        connection.connection = counting.real
    assert counting.calls == ["COMMIT"]
    assert Account.objects.get(pk=account.pk).balance == 900


def test_atomic_rolls_back_and_savepoints_still_work(make_account):
    account = make_account(balance=1_000)
    with pytest.raises(RuntimeError), transaction.atomic():
        Account.objects.filter(pk=account.pk).update(balance=1)
        raise RuntimeError
    with transaction.atomic():
        Account.objects.filter(pk=account.pk).update(balance=800)
        with pytest.raises(RuntimeError), transaction.atomic():
            Account.objects.filter(pk=account.pk).update(balance=2)
            raise RuntimeError
    assert Account.objects.get(pk=account.pk).balance == 800
    assert connection.connection.get_autocommit()


def test_manual_transactions_outside_atomic_keep_their_meaning(make_account):
    account = make_account(balance=1_000)
    transaction.set_autocommit(False)
    try:
        Account.objects.filter(pk=account.pk).update(balance=700)
        transaction.rollback()
        Account.objects.filter(pk=account.pk).update(balance=600)  # a new transaction, not autocommitted
        assert in_thread(lambda: Account.objects.get(pk=account.pk).balance) == 1_000
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert Account.objects.get(pk=account.pk).balance == 600


def test_query_logs_still_show_one_begin_per_transaction(make_account, django_assert_num_queries):
    account = make_account(balance=1_000)
    with django_assert_num_queries(3) as captured, transaction.atomic():  # BEGIN, UPDATE, COMMIT
        Account.objects.filter(pk=account.pk).update(balance=500)
    assert [q["sql"] for q in captured.captured_queries][::2] == ["BEGIN", "COMMIT"]
    assert services.deduct(account_id=account.pk, amount=100, strategy="atomic").outcome == "succeeded"
