"""The admin index's live panel: entries come from status providers, only when they have data."""

from __future__ import annotations

import pytest

from ledger import status
from ledger.attack import launcher


@pytest.mark.django_db
def test_panel_shows_the_default_strategy_and_nothing_invented(admin_client, settings):
    settings.LEDGER_DEFAULT_STRATEGY = "pessimistic"
    entries = admin_client.get("/live/status/").json()["entries"]
    assert [entry["key"] for entry in entries] == ["default_strategy"]
    assert entries[0]["value"] == "pessimistic" and "FOR UPDATE" in entries[0]["detail"]


@pytest.mark.django_db
def test_panel_lists_the_last_runs_with_their_loss(admin_client, recorded_run):
    entries = {entry["key"]: entry for entry in admin_client.get("/live/status/").json()["entries"]}
    table = entries["last_runs"]["table"]
    assert table["rows"][0][:3] == [recorded_run.pk, "optimistic", "finished"]
    assert table["rows"][0][-1] == "0" and table["alerts"] == [False]
    assert table["links"] == [f"/visualize/runs/{recorded_run.pk}/"]


@pytest.mark.django_db
def test_panel_shows_an_attack_in_progress_with_its_progress(admin_client):
    lock = launcher._lock()
    assert lock.acquire(blocking=False, token="abc")
    try:
        launcher._save_state(
            {"id": "abc", "status": "running", "user": "alice", "created_at": "2026-01-01T00:00:00", "error": "",
             "finished_at": None, "request": {},
             "runs": [{"strategy": "no-lock", "done": 40, "total": 40, "run_id": 7},
                      {"strategy": "mutex", "done": 10, "total": 40, "run_id": None}]}
        )  # fmt: skip
        launcher.cache.set(launcher.LATEST_KEY, "abc")
        entries = {entry["key"]: entry for entry in admin_client.get("/live/status/").json()["entries"]}
    finally:
        lock.release()
    progress = entries["attack_in_progress"]
    assert progress["value"] == "mutex (2 of 2)"
    assert progress["progress"]["done"] == 50 and progress["progress"]["total"] == 80
    assert progress["link"].endswith("/launch/abc/")


@pytest.mark.django_db
def test_a_failing_provider_shows_its_error_instead_of_breaking_the_panel():
    entries = status.collect(["ledger.status.default_strategy", "ledger.status.no_such_provider"])
    assert entries[0]["key"] == "default_strategy"
    assert entries[1]["level"] == "error" and "ImportError" in entries[1]["detail"]


@pytest.mark.django_db
def test_status_endpoint_is_for_staff_only(client):
    response = client.get("/live/status/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
