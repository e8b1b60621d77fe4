"""Every correct strategy loses nothing and never overdraws under real concurrency."""

from __future__ import annotations

import pytest

from ledger import services
from ledger.models import Account, Outcome
from strategies import registry
from tests.support import run_concurrently

CORRECT = [s.name for s in registry.all_strategies() if s.safe_across_processes]


def test_the_six_strategies_are_registered():
    assert set(registry.names()) == {"no-lock", "mutex", "pessimistic", "optimistic", "atomic", "redis-lock"}
    assert set(CORRECT) == {"pessimistic", "optimistic", "atomic", "redis-lock"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("strategy", CORRECT)
def test_correct_strategy_loses_nothing_and_never_overdraws(strategy, make_account):
    # 12 threads × 10 deductions of 100 against 5,000: exactly 50 can succeed.
    account = make_account(balance=5_000)

    def deduct_ten_times(_: int) -> list[str]:
        return [services.deduct(account_id=account.pk, amount=100, strategy=strategy).outcome for _ in range(10)]

    outcomes = [outcome for thread in run_concurrently(12, deduct_ten_times) for outcome in thread]
    account.refresh_from_db()
    succeeded = outcomes.count(Outcome.SUCCEEDED)
    assert account.balance == 5_000 - 100 * succeeded
    assert account.balance >= 0
    assert account.version == succeeded
    assert set(outcomes) <= {Outcome.SUCCEEDED, Outcome.INSUFFICIENT_FUNDS, Outcome.CONFLICT}
    if strategy != "optimistic":  # optimistic may give up on conflicts before the money runs out
        assert succeeded == 50
    [line] = services.audit(account_ids=[account.pk])
    assert line.ok and line.balance_loss == 0


@pytest.mark.django_db
@pytest.mark.parametrize("strategy", registry.names())
def test_insufficient_funds_is_recorded_and_changes_nothing(strategy, make_account):
    account = make_account(balance=50)
    attempt = services.deduct(account_id=account.pk, amount=100, strategy=strategy)
    assert attempt.outcome == Outcome.INSUFFICIENT_FUNDS
    assert attempt.balance_before == 50 and attempt.balance_after is None
    assert "less than the amount" in attempt.error
    account.refresh_from_db()
    assert (account.balance, account.version) == (50, 0)


@pytest.mark.django_db
@pytest.mark.parametrize("strategy", registry.names())
def test_success_records_balances_versions_and_timeline(strategy, make_account):
    account = make_account(balance=1_000)
    attempt = services.deduct(account_id=account.pk, amount=250, strategy=strategy, request_id=f"req-{strategy}")
    assert attempt.outcome == Outcome.SUCCEEDED
    assert (attempt.balance_before, attempt.balance_after) == (1_000, 750)
    assert (attempt.version_before, attempt.version_after) == (0, 1)
    assert attempt.request_id == f"req-{strategy}"
    assert attempt.started_at <= attempt.written_at <= attempt.finished_at
    assert attempt.duration_us > 0
    assert attempt.events[-1]["event"] == "written"
    assert Account.objects.get(pk=account.pk).balance == 750
    stored = type(attempt).objects.get(pk=attempt.pk)
    assert stored.written_at == attempt.written_at  # microseconds survive the round trip


@pytest.mark.django_db
@pytest.mark.parametrize("strategy", ["pessimistic", "mutex", "redis-lock"])
def test_locking_strategies_record_lock_wait(strategy, make_account):
    attempt = services.deduct(account_id=make_account().pk, amount=1, strategy=strategy)
    assert attempt.lock_wait_us is not None
    assert attempt.started_at <= attempt.lock_acquired_at <= attempt.read_at <= attempt.written_at
