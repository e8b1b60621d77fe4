"""Idempotency-Key on deductions: one key, one deduction, enforced by the database."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from django.db import connections

from ledger import services
from ledger.models import Account, DeductionAttempt
from strategies import registry
from tests.api.conftest import token_client
from tests.support import run_concurrently


def deduct(client, account_id: int, body: dict, key: str | None = "key-1"):
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(f"/api/accounts/{account_id}/deductions/", body, format="json", headers=headers)


@pytest.mark.django_db(transaction=True)
def test_same_key_and_body_returns_the_original_answer_and_deducts_once(api, make_account):
    account = make_account(balance=1_000)
    first = deduct(api, account.pk, {"amount": 100})
    again = deduct(api, account.pk, {"amount": 100})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert first.json()["idempotency_key"] == "key-1"
    assert Account.objects.get(pk=account.pk).balance == 900
    assert DeductionAttempt.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_refused_deduction_is_replayed_with_its_status_too(api, make_account):
    account = make_account(balance=50)
    first = deduct(api, account.pk, {"amount": 100})
    services.top_up(account_id=account.pk, amount=1_000)
    again = deduct(api, account.pk, {"amount": 100})
    assert first.status_code == again.status_code == 402
    assert again.json()["id"] == first.json()["id"]
    assert Account.objects.get(pk=account.pk).balance == 1_050


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("changed", "difference"),
    [({"amount": 200}, "amount 100 → 200"), ({"strategy": "pessimistic"}, "strategy 'atomic' → 'pessimistic'")],
)
def test_same_key_with_a_different_body_is_422(api, make_account, changed, difference):
    account = make_account(balance=1_000)
    assert deduct(api, account.pk, {"amount": 100, "strategy": "atomic"}).status_code == 201
    response = deduct(api, account.pk, {"amount": 100, "strategy": "atomic", **changed})
    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert difference in response.json()["detail"]
    assert Account.objects.get(pk=account.pk).balance == 900


@pytest.mark.django_db(transaction=True)
def test_same_key_for_another_account_is_422(api, make_account):
    one, two = make_account(), make_account()
    assert deduct(api, one.pk, {"amount": 100}).status_code == 201
    response = deduct(api, two.pk, {"amount": 100})
    assert response.status_code == 422
    assert f"account_id {one.pk} → {two.pk}" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_keys_are_scoped_per_user(api, other_api, make_account):
    account = make_account(balance=1_000)
    assert deduct(api, account.pk, {"amount": 100}).status_code == 201
    theirs = deduct(other_api, account.pk, {"amount": 100})
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs
    assert Account.objects.get(pk=account.pk).balance == 800


@pytest.mark.parametrize("key", ["", "x" * 201, "naïve", "with space"])
def test_a_malformed_key_is_400(api, make_account, key):
    response = deduct(api, make_account().pk, {"amount": 1}, key=key)
    assert response.status_code == 400
    assert "visible ASCII" in response.json()["fields"]["Idempotency-Key"][0]
    assert not DeductionAttempt.objects.exists()


def race_past_the_lookup(monkeypatch, barrier) -> None:
    """Hold every request after its 'was this key used?' lookup until all have done theirs,
    so that they all really run a deduction and only the database can stop the second."""
    deduct = services.deduct

    def deduct_after_everyone_looked(**kwargs):
        barrier.wait(timeout=30)
        return deduct(**kwargs)

    monkeypatch.setattr(services, "deduct", deduct_after_everyone_looked)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("strategy", registry.names())
def test_concurrent_duplicates_deduct_once_whatever_the_strategy(make_account, monkeypatch, strategy):
    account = make_account(balance=1_000)
    race_past_the_lookup(monkeypatch, threading.Barrier(2))
    clients = [token_client("alice"), token_client("alice")]

    def send(index: int):
        response = deduct(clients[index], account.pk, {"amount": 100, "strategy": strategy}, key="race")
        return response.status_code, response.json()["id"], response.get("Idempotent-Replayed")

    results = run_concurrently(2, send)
    assert [status for status, _, _ in results] == [201, 201]
    assert results[0][1] == results[1][1]  # one attempt, reported to both
    assert sorted(str(replayed) for _, _, replayed in results) == ["None", "true"]
    assert Account.objects.get(pk=account.pk).balance == 900
    assert DeductionAttempt.objects.count() == 1


def _send_from_child(account_id: int, token: str, results) -> None:
    from rest_framework.test import APIClient

    try:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        response = deduct(client, account_id, {"amount": 100, "strategy": "pessimistic"}, key="across-processes")
        results.put((response.status_code, response.json().get("id")))
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_from_two_processes_deduct_once(make_account, monkeypatch):
    """Two OS processes (like two gunicorn instances) share nothing but the database."""
    account = make_account(balance=1_000)
    token = token_client("alice")._credentials["HTTP_AUTHORIZATION"].split()[1]
    context = multiprocessing.get_context("fork")
    race_past_the_lookup(monkeypatch, context.Barrier(2))
    results = context.Queue()
    connections.close_all()  # forked children must open their own connections
    children = [context.Process(target=_send_from_child, args=(account.pk, token, results)) for _ in range(2)]
    for child in children:
        child.start()
    answers = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert [status for status, _ in answers] == [201, 201]
    assert answers[0][1] == answers[1][1]
    assert Account.objects.get(pk=account.pk).balance == 900
    assert DeductionAttempt.objects.count() == 1
