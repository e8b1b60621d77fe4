"""POST /api/accounts/{id}/deductions/: outcomes, their status codes, and bad input."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from ledger import services
from ledger.models import Account, DeductionAttempt, Outcome
from strategies import atomic, redis_lock, registry
from strategies.base import DeductionTrace
from tests.support import once


def deduct(client, account_id: int, body: dict, **headers):
    return client.post(f"/api/accounts/{account_id}/deductions/", body, format="json", headers=headers)


@pytest.mark.parametrize("strategy", registry.names())
def test_success_is_201_with_the_recorded_attempt_and_its_timeline(api, make_account, strategy):
    account = make_account(balance=1_000)
    response = deduct(api, account.pk, {"amount": 250, "strategy": strategy}, **{"X-Request-ID": f"req-{strategy}"})
    assert response.status_code == 201
    body = response.json()
    assert body["outcome"] == "succeeded"
    assert (body["strategy"], body["amount"], body["account"]) == (strategy, 250, account.pk)
    assert (body["balance_before"], body["balance_after"]) == (1_000, 750)
    assert (body["version_before"], body["version_after"]) == (0, 1)
    assert body["request_id"] == response["X-Request-ID"] == f"req-{strategy}"
    assert body["instance_id"] == response["X-Instance"]
    assert body["duration_ms"] > 0 and body["retries"] == 0
    assert body["timeline"][-1]["event"] == "written"
    assert response["Location"] == f"/api/attempts/{body['id']}/"
    assert Account.objects.get(pk=account.pk).balance == 750


def test_strategy_defaults_to_the_setting(api, make_account, settings):
    settings.LEDGER_DEFAULT_STRATEGY = "pessimistic"
    response = deduct(api, make_account().pk, {"amount": 1})
    assert response.json()["strategy"] == "pessimistic"
    assert response.json()["lock_wait_ms"] is not None


def test_insufficient_funds_is_402_recorded_and_changes_nothing(api, make_account):
    account = make_account(balance=50)
    response = deduct(api, account.pk, {"amount": 100})
    assert response.status_code == 402
    assert response.json()["outcome"] == "insufficient_funds"
    assert "less than the amount" in response.json()["error"]
    assert DeductionAttempt.objects.get().outcome == Outcome.INSUFFICIENT_FUNDS
    assert Account.objects.get(pk=account.pk).balance == 50


def test_optimistic_conflict_is_409(api, make_account, settings, monkeypatch):
    settings.LEDGER_OPTIMISTIC_MAX_RETRIES = 0
    account = make_account(balance=1_000)
    # Another writer changes the account between the optimistic read and its write.
    think = DeductionTrace.think
    concurrent_top_up = once(lambda: services.top_up(account_id=account.pk, amount=1))
    monkeypatch.setattr(DeductionTrace, "think", lambda trace: (think(trace), concurrent_top_up()))
    response = deduct(api, account.pk, {"amount": 100, "strategy": "optimistic"})
    assert response.status_code == 409
    assert response.json()["outcome"] == "conflict"
    assert Account.objects.get(pk=account.pk).balance == 1_001


def test_lock_timeout_is_423(api, make_account, settings):
    settings.LEDGER_LOCK_WAIT_S = 0.1
    account = make_account()
    holder = cache.lock(redis_lock.lock_key(account.pk), timeout=30)
    assert holder.acquire(blocking=False)
    try:
        response = deduct(api, account.pk, {"amount": 100, "strategy": "redis-lock"})
    finally:
        holder.release()
    assert response.status_code == 423
    assert response.json()["outcome"] == "lock_timeout"


def test_an_unexpected_strategy_failure_is_a_recorded_500(api, make_account, monkeypatch):
    account = make_account()

    def broken(account_id, amount):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(atomic, "deduct_in_place", broken)
    response = deduct(api, account.pk, {"amount": 100, "strategy": "atomic"})
    assert response.status_code == 500
    assert response.json()["outcome"] == "error"
    assert "disk on fire" in response.json()["error"]
    assert DeductionAttempt.objects.get().outcome == Outcome.ERROR


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"amount": 1.5}, "amount", "must be a JSON integer"),
        ({"amount": 100.0}, "amount", "must be a JSON integer"),
        ({"amount": "1e3"}, "amount", "must be a JSON integer"),
        ({"amount": "100"}, "amount", "must be a JSON integer"),
        ({"amount": True}, "amount", "must be a JSON integer"),
        ({"amount": None}, "amount", "may not be null"),
        ({}, "amount", "required"),
        ({"amount": 0}, "amount", "greater than or equal to 1"),
        ({"amount": -5}, "amount", "greater than or equal to 1"),
        ({"amount": 100_000_001}, "amount", "must be at most 100000000"),
        ({"amount": 10**40}, "amount", "must be at most 100000000"),
        ({"amount": 1, "think_ms": -1}, "think_ms", "greater than or equal to 0"),
        ({"amount": 1, "think_ms": 1.5}, "think_ms", "must be a JSON integer"),
        ({"amount": 1, "think_ms": 5_000}, "think_ms", "must be at most 1000"),
        ({"amount": 1, "strategy": ""}, "strategy", "may not be blank"),
    ],
)
def test_bad_input_is_400_with_a_field_message_and_records_nothing(api, make_account, body, field, message):
    account = make_account(balance=1_000)
    response = deduct(api, account.pk, body)
    assert response.status_code == 400, response.content
    error = response.json()
    assert error["error"] == "invalid"
    assert message in " ".join(error["fields"][field])
    assert not DeductionAttempt.objects.exists()
    assert Account.objects.get(pk=account.pk).balance == 1_000


def test_unknown_strategy_is_400_listing_the_valid_names(api, make_account):
    response = deduct(api, make_account().pk, {"amount": 1, "strategy": "yolo"})
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "unknown_strategy"
    assert error["valid"] == registry.names()
    assert "valid names: mutex, no-lock" in error["fields"]["strategy"][0]


def test_think_time_is_refused_when_the_setting_disables_it(api, make_account, settings):
    settings.LEDGER_MAX_THINK_MS = 0
    response = deduct(api, make_account().pk, {"amount": 1, "think_ms": 5})
    assert response.status_code == 400
    assert "think time is disabled" in response.json()["fields"]["think_ms"][0]


def test_unknown_account_is_404_and_records_nothing(api):
    response = deduct(api, 987654, {"amount": 1})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert not DeductionAttempt.objects.exists()


def test_malformed_json_is_400_and_a_wrong_content_type_415(api, make_account):
    url = f"/api/accounts/{make_account().pk}/deductions/"
    malformed = api.post(url, data='{"amount": 1', content_type="application/json")
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "malformed_request"
    assert api.post(url, data='{"amount": NaN}', content_type="application/json").status_code == 400
    form = api.post(url, data="amount=1", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    assert form.json()["error"] == "unsupported_media_type"
    assert api.post(url, data="[1, 2]", content_type="application/json").status_code == 400
    assert not DeductionAttempt.objects.exists()


@pytest.mark.django_db(transaction=True)  # like production: the refused insert runs in autocommit
def test_a_request_id_names_one_attempt_only(api, make_account):
    account = make_account(balance=1_000)
    assert deduct(api, account.pk, {"amount": 100}, **{"X-Request-ID": "client-chosen-1"}).status_code == 201
    again = deduct(api, account.pk, {"amount": 100}, **{"X-Request-ID": "client-chosen-1"})
    assert again.status_code == 409
    assert again.json()["error"] == "request_id_reused"
    assert Account.objects.get(pk=account.pk).balance == 900
    assert DeductionAttempt.objects.count() == 1


def test_only_post_is_allowed(api, make_account):
    response = api.get(f"/api/accounts/{make_account().pk}/deductions/")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
