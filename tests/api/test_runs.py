"""/api/runs/: attack runs and what they measured."""

from __future__ import annotations

import pytest

from ledger.attack.engine import AttackPlan, run_attack
from ledger.attack.report import REPORT_KEYS


@pytest.mark.django_db(transaction=True)
def test_runs_are_listed_newest_first_with_their_measurements(api):
    older = run_attack(AttackPlan(strategy="atomic", requests=4, concurrency=2, balance=200))
    newer = run_attack(AttackPlan(strategy="pessimistic", requests=4, concurrency=2, balance=1_000))
    listed = api.get("/api/runs/").json()["results"]
    assert [run["id"] for run in listed] == [newer.pk, older.pk]
    detail = api.get(f"/api/runs/{older.pk}/").json()
    assert set(REPORT_KEYS) <= set(detail)
    assert (detail["succeeded"], detail["insufficient_funds"], detail["balance_loss"]) == (2, 2, 0)
    assert detail["status"] == "finished" and detail["target"] == "in-process"
    assert detail["account"] == older.account_id


def test_unknown_run_is_404(api):
    assert api.get("/api/runs/424242/").status_code == 404
