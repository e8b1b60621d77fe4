"""/api/accounts/: open, list and read accounts."""

from __future__ import annotations

import pytest

from ledger.models import Account


def test_opening_an_account_answers_201_with_the_account_and_its_location(api):
    response = api.post("/api/accounts/", {"name": "wallet", "balance": 12_500}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "wallet"
    assert (body["balance"], body["opening_balance"], body["version"]) == (12_500, 12_500, 0)
    assert response["Location"] == f"/api/accounts/{body['id']}/"
    assert Account.objects.get(pk=body["id"]).balance == 12_500


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"name": "a", "balance": 10.0}, "balance", "must be a JSON integer"),
        ({"name": "a", "balance": 10.5}, "balance", "must be a JSON integer"),
        ({"name": "a", "balance": "1e3"}, "balance", "must be a JSON integer"),
        ({"name": "a", "balance": "100"}, "balance", "must be a JSON integer"),
        ({"name": "a", "balance": True}, "balance", "must be a JSON integer"),
        ({"name": "a", "balance": None}, "balance", "may not be null"),
        ({"name": "a"}, "balance", "required"),
        ({"name": "a", "balance": -1}, "balance", "greater than or equal to 0"),
        ({"name": "a", "balance": 2**62 + 1}, "balance", "less than or equal to"),
        ({"name": "", "balance": 1}, "name", "may not be blank"),
        ({"name": "   ", "balance": 1}, "name", "may not be blank"),
        ({"name": "x" * 101, "balance": 1}, "name", "no more than 100 characters"),
        ({"balance": 1}, "name", "required"),
    ],
)
def test_bad_account_input_gets_400_with_a_field_message_and_writes_nothing(api, body, field, message):
    response = api.post("/api/accounts/", body, format="json")
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "invalid"
    assert message in " ".join(error["fields"][field])
    assert not Account.objects.exists()


def test_a_taken_name_gets_400(api, make_account):
    make_account(name="taken")
    response = api.post("/api/accounts/", {"name": "taken", "balance": 1}, format="json")
    assert response.status_code == 400
    assert response.json()["fields"]["name"] == ["an account with this name already exists"]


def test_list_is_paginated_newest_first(api, make_account):
    accounts = [make_account() for _ in range(3)]
    first = api.get("/api/accounts/", {"page_size": 2}).json()
    assert [a["id"] for a in first["results"]] == [accounts[2].pk, accounts[1].pk]
    second = api.get(first["next"]).json()
    assert [a["id"] for a in second["results"]] == [accounts[0].pk]
    assert second["next"] is None


def test_one_account_and_unknown_ids(api, make_account):
    account = make_account(balance=700)
    assert api.get(f"/api/accounts/{account.pk}/").json()["balance"] == 700
    missing = api.get("/api/accounts/999999/")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert api.get("/api/accounts/99999999999999999999999999/").status_code == 404
    assert api.get("/api/accounts/abc/").status_code == 404
