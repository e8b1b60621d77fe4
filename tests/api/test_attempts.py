"""/api/attempts/: every recorded deduction attempt, filterable, newest first."""

from __future__ import annotations

import pytest

from ledger import services
from ledger.attack.engine import AttackPlan, run_attack
from ledger.models import DeductionAttempt
from strategies import registry


@pytest.fixture
def attempts(make_account):
    rich, poor = make_account(balance=1_000), make_account(balance=0)
    return [
        services.deduct(account_id=rich.pk, amount=100, strategy="atomic"),
        services.deduct(account_id=poor.pk, amount=100, strategy="pessimistic"),
        services.deduct(account_id=rich.pk, amount=100, strategy="optimistic"),
    ]


def ids(response) -> list[int]:
    return [attempt["id"] for attempt in response.json()["results"]]


def test_list_is_newest_first_and_paginated(api, attempts):
    first = api.get("/api/attempts/", {"page_size": 2})
    assert ids(first) == [attempts[2].pk, attempts[1].pk]
    assert ids(api.get(first.json()["next"])) == [attempts[0].pk]


def test_filters(api, attempts):
    rich = attempts[0].account_id
    assert ids(api.get("/api/attempts/", {"account": rich})) == [attempts[2].pk, attempts[0].pk]
    assert ids(api.get("/api/attempts/", {"strategy": "pessimistic"})) == [attempts[1].pk]
    assert ids(api.get("/api/attempts/", {"outcome": "insufficient_funds"})) == [attempts[1].pk]
    assert ids(api.get("/api/attempts/", {"instance": attempts[0].instance_id, "account": rich})) == [
        attempts[2].pk,
        attempts[0].pk,
    ]
    assert ids(api.get("/api/attempts/", {"instance": "elsewhere"})) == []


@pytest.mark.django_db(transaction=True)
def test_filter_by_attack_run(api):
    run = run_attack(AttackPlan(strategy="atomic", requests=4, concurrency=2, balance=1_000))
    services.deduct(account_id=run.account_id, amount=1)
    listed = api.get("/api/attempts/", {"run": run.pk}).json()["results"]
    assert len(listed) == 4 and {a["attack_run"] for a in listed} == {run.pk}


@pytest.mark.parametrize(
    ("query", "field"),
    [({"account": "x"}, "account"), ({"outcome": "won"}, "outcome"), ({"run": "-1"}, "run")],
)
def test_bad_filters_are_400(api, query, field):
    response = api.get("/api/attempts/", query)
    assert response.status_code == 400
    assert field in response.json()["fields"]


def test_an_unknown_strategy_filter_lists_the_valid_names(api):
    response = api.get("/api/attempts/", {"strategy": "nope"})
    assert response.status_code == 400
    assert response.json()["valid"] == registry.names()


def test_one_attempt_with_its_timeline(api, attempts):
    body = api.get(f"/api/attempts/{attempts[2].pk}/").json()
    stored = DeductionAttempt.objects.get(pk=attempts[2].pk)
    assert body["strategy"] == "optimistic"
    assert body["timeline"] == stored.events
    assert [event["event"] for event in body["timeline"]][-1] == "written"
    assert api.get("/api/attempts/999999/").status_code == 404
