"""The service: the one door for a deduction, its validation, adjustments and the audit."""

from __future__ import annotations

import pytest

from ledger import services
from ledger.errors import AccountNotFound, InvalidRequest, UnknownStrategy
from ledger.models import Account, BalanceAdjustment, DeductionAttempt, Outcome
from strategies import registry
from strategies.base import Strategy


@pytest.mark.django_db
@pytest.mark.parametrize("amount", [0, -1, 1.0, 100.5, "100", "1e3", True, None, 10**12])
def test_bad_amounts_are_refused_before_anything_is_written(make_account, amount):
    account = make_account()
    with pytest.raises(InvalidRequest) as refused:
        services.deduct(account_id=account.pk, amount=amount, strategy="atomic")
    assert refused.value.field == "amount"
    assert not DeductionAttempt.objects.exists()
    assert Account.objects.get(pk=account.pk).balance == 10_000


@pytest.mark.django_db
def test_largest_allowed_amount_is_the_setting(make_account, settings):
    settings.LEDGER_MAX_AMOUNT = 500
    account = make_account()
    assert services.deduct(account_id=account.pk, amount=500).outcome == Outcome.SUCCEEDED
    with pytest.raises(InvalidRequest, match="at most 500"):
        services.deduct(account_id=account.pk, amount=501)


@pytest.mark.django_db
@pytest.mark.parametrize("think_ms", [-1, 1.5, "5", 1001])
def test_bad_think_times_are_refused(make_account, think_ms):
    with pytest.raises(InvalidRequest) as refused:
        services.deduct(account_id=make_account().pk, amount=1, strategy="no-lock", think_ms=think_ms)
    assert refused.value.field == "think_ms"


@pytest.mark.django_db
def test_think_time_is_refused_entirely_when_disabled(make_account, settings):
    settings.LEDGER_MAX_THINK_MS = 0
    with pytest.raises(InvalidRequest, match="disabled"):
        services.deduct(account_id=make_account().pk, amount=1, strategy="pessimistic", think_ms=1)


@pytest.mark.django_db
def test_unknown_strategy_lists_the_valid_names(make_account):
    with pytest.raises(UnknownStrategy) as refused:
        services.deduct(account_id=make_account().pk, amount=1, strategy="yolo")
    assert refused.value.field == "strategy"
    for name in registry.names():
        assert name in str(refused.value)


@pytest.mark.django_db
def test_unknown_account_is_an_error_not_a_record():
    with pytest.raises(AccountNotFound):
        services.deduct(account_id=999_999, amount=1, strategy="pessimistic")
    assert not DeductionAttempt.objects.exists()


@pytest.mark.django_db
def test_the_default_strategy_comes_from_settings(make_account, settings):
    settings.LEDGER_DEFAULT_STRATEGY = "optimistic"
    assert services.deduct(account_id=make_account().pk, amount=1).strategy == "optimistic"


@pytest.mark.django_db
def test_every_attempt_gets_a_unique_request_id_and_an_instance_id(make_account):
    account = make_account()
    attempts = [services.deduct(account_id=account.pk, amount=1) for _ in range(3)]
    assert len({a.request_id for a in attempts}) == 3
    assert all(a.instance_id == services.current_instance_id() for a in attempts)


@pytest.mark.django_db
def test_instance_id_comes_from_the_environment_when_set(settings):
    settings.INSTANCE_ID = "app-1"
    assert services.current_instance_id() == "app-1"


class Exploding(Strategy):
    """A strategy that fails in an unexpected way."""

    name = "exploding"
    safe_across_processes = True

    def deduct(self, trace):
        raise RuntimeError("disk on fire")


@pytest.mark.django_db
def test_an_unexpected_failure_is_recorded_as_error(make_account, monkeypatch):
    monkeypatch.setitem(registry._strategies, "exploding", Exploding())
    account = make_account()
    attempt = services.deduct(account_id=account.pk, amount=1, strategy="exploding")
    assert attempt.outcome == Outcome.ERROR
    assert attempt.error == "RuntimeError: disk on fire"
    assert DeductionAttempt.objects.get(pk=attempt.pk).outcome == Outcome.ERROR


@pytest.mark.django_db
def test_top_up_and_reset_are_recorded_and_keep_the_audit_exact(make_account):
    account = make_account(balance=1_000)
    services.deduct(account_id=account.pk, amount=300, strategy="atomic")
    top_up = services.top_up(account_id=account.pk, amount=500, note="birthday")
    reset = services.reset_balance(account_id=account.pk, balance=50)
    assert (top_up.kind, top_up.delta, top_up.balance_after) == (BalanceAdjustment.Kind.TOP_UP, 500, 1_200)
    assert (reset.kind, reset.delta, reset.version_after) == (BalanceAdjustment.Kind.RESET, -1_150, 3)
    account.refresh_from_db()
    assert (account.balance, account.version) == (50, 3)
    [line] = services.audit(account_ids=[account.pk])
    assert line.ok
    assert (line.opening_balance, line.adjustments, line.deducted, line.expected_balance) == (1_000, -650, 300, 50)


@pytest.mark.django_db
@pytest.mark.parametrize("balance", [-1, 1.5, "10"])
def test_reset_refuses_a_bad_balance(make_account, balance):
    with pytest.raises(InvalidRequest):
        services.reset_balance(account_id=make_account().pk, balance=balance)


@pytest.mark.django_db
def test_audit_detects_a_balance_changed_behind_the_ledgers_back(make_account):
    honest, tampered = make_account(balance=1_000), make_account(balance=1_000)
    services.deduct(account_id=tampered.pk, amount=100, strategy="pessimistic")
    Account.objects.filter(pk=tampered.pk).update(balance=950)
    lines = {line.account_id: line for line in services.audit()}
    assert lines[honest.pk].ok
    assert not lines[tampered.pk].ok
    assert (lines[tampered.pk].expected_balance, lines[tampered.pk].balance_loss) == (900, -50)


@pytest.mark.django_db
def test_the_database_refuses_a_negative_balance(make_account):
    from django.db import IntegrityError, transaction

    account = make_account(balance=10)
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.filter(pk=account.pk).update(balance=-1)


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "balance", "field"), [("", 10, "name"), ("x", -5, "balance"), ("x", 1.5, "balance")])
def test_open_account_validates(name, balance, field):
    with pytest.raises(InvalidRequest) as refused:
        services.open_account(name=name, balance=balance)
    assert refused.value.field == field


@pytest.mark.django_db
def test_balance_selector_reads_balance_and_version(make_account):
    from ledger import selectors

    account = make_account(balance=700)
    services.deduct(account_id=account.pk, amount=200, strategy="atomic")
    read = selectors.balance(account_id=account.pk)
    assert (read.balance, read.version, read.source) == (500, 1, "database")
    with pytest.raises(AccountNotFound):
        selectors.balance(account_id=987_654)
