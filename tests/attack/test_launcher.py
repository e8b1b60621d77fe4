"""Launching attacks from the admin: validated, in the background, one at a time, with progress."""

from __future__ import annotations

import time
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.utils.html import escape

from ledger.attack import launcher
from ledger.models import AttackRun, DeductionAttempt
from strategies import registry

LAUNCH_URL = "/admin/ledger/attackrun/launch/"
VALID = {"mode": "atomic", "requests": "20", "concurrency": "2", "processes": "1", "amount": "100",
         "balance": "1000", "think_ms": "0"}  # fmt: skip


def launch_id_from(response) -> str:
    assert response.status_code == 302, response.content.decode()[:2000]
    return response["Location"].rstrip("/").rsplit("/", 1)[-1]


def wait_until(condition, timeout: float = 30):
    """Poll an outside process's progress (it reports to Redis; there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_launch_left_behind():
    yield
    for launch_id in list(launcher._reapers):
        launcher.wait(launch_id, timeout=120)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"requests": "0"}, "requests", "must be an integer from 1 to"),
        ({"requests": "ten"}, "requests", "Enter a whole number."),
        ({"concurrency": "0"}, "concurrency", "must be an integer from 1 to"),
        ({"concurrency": "2", "processes": "3"}, "processes", "must be an integer from 1 to 2"),
        ({"amount": "-1"}, "amount", "must be greater than zero"),
        ({"balance": "-1"}, "balance", "must be an integer from 0"),
        ({"think_ms": "999999"}, "think_ms", "must be at most"),
        ({"mode": "no-such-strategy"}, "mode", "Select a valid choice."),
        ({"amount": ""}, "amount", "This field is required."),
    ],
)
def test_launch_form_refuses_bad_input_field_by_field_and_starts_nothing(admin_client, changes, field, message):
    response = admin_client.post(LAUNCH_URL, {**VALID, **changes})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert not launcher.is_locked() and not AttackRun.objects.exists()


@pytest.mark.django_db
def test_launching_needs_the_add_attack_run_permission(client):
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.post(LAUNCH_URL, VALID).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="add_attackrun"))
    assert client.get(LAUNCH_URL).status_code == 200
    assert not launcher.is_locked()


@pytest.mark.django_db
def test_launch_page_offers_every_strategy_with_its_description(admin_client):
    page = admin_client.get(LAUNCH_URL).content.decode()
    for strategy in registry.all_strategies():
        assert f'value="{strategy.name}"' in page
        assert escape(strategy.description()[:60]) in page


@pytest.mark.django_db(transaction=True)
def test_a_launched_attack_runs_in_the_background_and_its_runs_appear(admin_client):
    response = admin_client.post(LAUNCH_URL, {**VALID, "mode": "all"})
    launch_id = launch_id_from(response)  # answered at once: the attack runs in another process
    progress = admin_client.get(response["Location"])
    assert progress.status_code == 200 and b"launch-status" in progress.content

    state = launcher.wait(launch_id, timeout=120)
    assert state["status"] == "finished", state
    run_ids = [run["run_id"] for run in state["runs"]]
    runs = AttackRun.objects.in_bulk(run_ids)
    assert [runs[pk].strategy for pk in run_ids] == registry.names()
    for pk in run_ids:
        assert runs[pk].status == AttackRun.Status.FINISHED
        assert DeductionAttempt.objects.filter(attack_run_id=pk).count() == 20
    assert not launcher.is_locked()

    results = admin_client.get(response["Location"]).content.decode()
    assert 'id="launch-results"' in results and "balance loss" in results
    assert f"runs={','.join(str(pk) for pk in run_ids)}" in results
    assert admin_client.get(f"/admin/ledger/attackrun/launch/{launch_id}/state/").json()["status"] == "finished"


@pytest.mark.django_db(transaction=True)
def test_a_second_launch_is_refused_while_the_first_runs_in_another_process(admin_client):
    slow = {**VALID, "requests": "60", "concurrency": "2", "think_ms": "20", "mode": "pessimistic"}
    first = launch_id_from(admin_client.post(LAUNCH_URL, slow))
    # Once the attack process reports, it holds the launch lock (the request that took it is over).
    wait_until(lambda: launcher.get_state(first)["status"] == "running")

    refused = admin_client.post(LAUNCH_URL, VALID)
    assert refused.status_code == 409
    assert "An attack is already running" in refused.content.decode()
    assert first[:8] in refused.content.decode()

    assert launcher.wait(first, timeout=120)["status"] == "finished"
    third = launch_id_from(admin_client.post(LAUNCH_URL, VALID))
    assert launcher.wait(third, timeout=120)["status"] == "finished"


@pytest.mark.django_db(transaction=True)
def test_an_attack_process_that_fails_is_reported_and_frees_the_lock():
    # Bypasses the form's validation on purpose: the process itself refuses the strategy.
    request = launcher.LaunchRequest(
        mode="no-such-strategy", requests=1, concurrency=1, processes=1, amount=1, balance=1, think_ms=0
    )
    state = launcher.launch(request, strategies=["no-such-strategy"], user="test")
    final = launcher.wait(state["id"], timeout=60)
    assert final["status"] == "failed"
    assert "unknown strategy" in final["error"]
    assert not launcher.is_locked()


@pytest.mark.django_db(transaction=True)
def test_attack_command_reports_its_progress_and_runs_to_the_launch():
    launch_id = uuid.uuid4().hex
    lock = launcher._lock()
    assert lock.acquire(blocking=False, token=launch_id)
    request = launcher.LaunchRequest(
        mode="atomic", requests=10, concurrency=2, processes=1, amount=10, balance=1000, think_ms=0
    )
    launcher._save_state(
        {"id": launch_id, "status": "starting", "user": "", "created_at": "2026-01-01T00:00:00", "error": "",
         "finished_at": None, "request": {}, "runs": [{"strategy": "atomic", "done": 0, "total": 10, "run_id": None}]}
    )  # fmt: skip
    call_command(*request.command_args(launch_id))
    state = launcher.get_state(launch_id)
    assert state["status"] == "finished"
    [run] = state["runs"]
    assert (run["done"], run["total"]) == (10, 10)
    assert AttackRun.objects.get(pk=run["run_id"]).succeeded == 10
    assert not launcher.is_locked()


@pytest.mark.django_db
def test_a_launch_that_stopped_reporting_is_shown_as_stale():
    launcher._save_state(
        {"id": "gone", "status": "running", "user": "", "created_at": "2026-01-01T00:00:00", "error": "",
         "finished_at": None, "request": {}, "runs": []}
    )  # fmt: skip
    # Nobody holds the lock: its holder died and the lock expired.
    assert launcher.state_of("gone")["status"] == "stale"
