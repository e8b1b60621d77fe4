"""The Django admin: every page renders with data, records stay read-only, money moves through services."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from ledger import admin as ledger_admin
from ledger import services
from ledger.models import Account, AttackRun, BalanceAdjustment, DeductionAttempt, Outcome

pytestmark = pytest.mark.django_db


def admin_pages(run: AttackRun) -> list[str]:
    attempt = DeductionAttempt.objects.filter(attack_run=run).first()
    adjustment = BalanceAdjustment.objects.first()
    day = attempt.started_at
    return [
        "/admin/",
        "/admin/ledger/",
        "/admin/ledger/account/",
        "/admin/ledger/account/?q=test",
        "/admin/ledger/account/add/",
        f"/admin/ledger/account/{run.account_id}/change/",
        "/admin/ledger/deductionattempt/",
        f"/admin/ledger/deductionattempt/{attempt.pk}/change/",
        "/admin/ledger/deductionattempt/?strategy=optimistic",
        "/admin/ledger/deductionattempt/?outcome=insufficient_funds",
        f"/admin/ledger/deductionattempt/?instance={attempt.instance_id}",
        f"/admin/ledger/deductionattempt/?run={run.pk}",
        f"/admin/ledger/deductionattempt/?account={run.account_id}",
        f"/admin/ledger/deductionattempt/?q={attempt.request_id}",
        f"/admin/ledger/deductionattempt/?started_at__year={day.year}",
        f"/admin/ledger/deductionattempt/?started_at__year={day.year}&started_at__month={day.month}",
        f"/admin/ledger/deductionattempt/?started_at__year={day.year}&started_at__month={day.month}"
        f"&started_at__day={day.day}",
        "/admin/ledger/attackrun/",
        "/admin/ledger/attackrun/?status=finished&strategy=optimistic",
        f"/admin/ledger/attackrun/{run.pk}/change/",
        "/admin/ledger/attackrun/launch/",
        "/admin/ledger/balanceadjustment/",
        "/admin/ledger/balanceadjustment/?kind=top_up",
        f"/admin/ledger/balanceadjustment/{adjustment.pk}/change/",
    ]


def test_every_admin_page_renders_with_data_present(admin_client, recorded_run):
    for url in admin_pages(recorded_run):
        response = admin_client.get(url)
        assert response.status_code == 200, url


def test_attempt_list_shows_badges_balances_versions_and_links(admin_client, recorded_run):
    page = admin_client.get(f"/admin/ledger/deductionattempt/?run={recorded_run.pk}").content.decode()
    assert page.count('class="zbl-badge"') == 5
    assert "300 → 200" in page and "0 → 1" in page  # balance and version, before → after
    assert f"run {recorded_run.pk}" in page
    assert "5 deduction attempts" in page


def test_filters_narrow_the_attempt_list(admin_client, recorded_run):
    refused = admin_client.get("/admin/ledger/deductionattempt/?outcome=insufficient_funds")
    assert list(refused.context["cl"].result_list.values_list("outcome", flat=True)) == [Outcome.INSUFFICIENT_FUNDS] * 2
    none = admin_client.get("/admin/ledger/deductionattempt/?strategy=no-lock")
    assert none.context["cl"].result_count == 0


def test_search_finds_an_attempt_by_its_exact_request_id(admin_client, recorded_run):
    attempt = DeductionAttempt.objects.filter(attack_run=recorded_run).last()
    found = admin_client.get(f"/admin/ledger/deductionattempt/?q={attempt.request_id}")
    assert [a.pk for a in found.context["cl"].result_list] == [attempt.pk]
    partial = admin_client.get(f"/admin/ledger/deductionattempt/?q={attempt.request_id[:6]}")
    assert partial.context["cl"].result_count == 0


def test_attempt_list_runs_a_fixed_number_of_queries_whatever_the_page_size(
    admin_client, recorded_run, django_assert_max_num_queries
):
    admin_client.get("/admin/ledger/deductionattempt/")  # warm up session and content types
    with django_assert_max_num_queries(12) as few:
        admin_client.get("/admin/ledger/deductionattempt/")
    for _ in range(30):
        services.deduct(account_id=recorded_run.account_id, amount=1, strategy="atomic", attack_run_id=recorded_run.pk)
    with django_assert_max_num_queries(len(few.captured_queries)):
        admin_client.get("/admin/ledger/deductionattempt/")


def test_attempt_count_stops_at_the_cap_and_says_so(admin_client, recorded_run, monkeypatch):
    monkeypatch.setattr(ledger_admin.CappedCountPaginator, "CAP", 3)
    page = admin_client.get("/admin/ledger/deductionattempt/").content.decode()
    assert "more than 3 deduction attempts" in page
    filtered = admin_client.get("/admin/ledger/deductionattempt/?strategy=optimistic").content.decode()
    assert "more than 3 results" in filtered


def test_attempts_are_read_only_even_for_superusers(admin_client, recorded_run):
    attempt = DeductionAttempt.objects.first()
    assert admin_client.get("/admin/ledger/deductionattempt/add/").status_code == 403
    assert admin_client.post(f"/admin/ledger/deductionattempt/{attempt.pk}/change/", {"amount": 1}).status_code == 403
    assert admin_client.get(f"/admin/ledger/deductionattempt/{attempt.pk}/delete/").status_code == 403
    bulk = admin_client.post(
        "/admin/ledger/deductionattempt/", {"action": "delete_selected", "_selected_action": [attempt.pk]}
    )
    assert bulk.status_code == 200  # the action does not exist: nothing happens
    assert DeductionAttempt.objects.filter(pk=attempt.pk).exists()
    view = admin_client.get(f"/admin/ledger/deductionattempt/{attempt.pk}/change/").content.decode()
    assert 'name="amount"' not in view and "show it on the timeline" in view


def test_adjustments_are_read_only(admin_client, recorded_run):
    adjustment = BalanceAdjustment.objects.first()
    assert admin_client.get("/admin/ledger/balanceadjustment/add/").status_code == 403
    assert admin_client.get(f"/admin/ledger/balanceadjustment/{adjustment.pk}/delete/").status_code == 403


def test_runs_are_measurements_only_a_superuser_deletes_one_and_its_attempts_remain(admin_client, client, recorded_run):
    assert admin_client.get("/admin/ledger/attackrun/add/").status_code == 403
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_attackrun", "delete_attackrun"]))
    client.force_login(staff)
    assert client.post(f"/admin/ledger/attackrun/{recorded_run.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.post(f"/admin/ledger/attackrun/{recorded_run.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not AttackRun.objects.filter(pk=recorded_run.pk).exists()
    assert DeductionAttempt.objects.filter(account=recorded_run.account).count() == 5


def test_a_running_run_cannot_be_deleted(admin_client, recorded_run):
    AttackRun.objects.filter(pk=recorded_run.pk).update(status=AttackRun.Status.RUNNING)
    assert admin_client.get(f"/admin/ledger/attackrun/{recorded_run.pk}/delete/").status_code == 403


def test_compare_action_opens_the_comparison_of_the_selected_runs(admin_client, recorded_run):
    response = admin_client.post(
        "/admin/ledger/attackrun/", {"action": "compare_selected", "_selected_action": [recorded_run.pk]}
    )
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('visualize-compare')}?runs={recorded_run.pk}"


def test_top_up_action_records_an_adjustment_and_the_audit_stays_exact(admin_client, make_account):
    account = make_account(balance=1_000)
    form = admin_client.post(
        "/admin/ledger/account/", {"action": "top_up", "_selected_action": [account.pk]}
    )  # first step: the form asking for the amount
    assert form.status_code == 200 and b"Top up 1 account(s)" in form.content
    done = admin_client.post(
        "/admin/ledger/account/",
        {"action": "top_up", "_selected_action": [account.pk], "apply": "1", "amount": "250", "note": "gift"},
    )
    assert done.status_code == 302
    account.refresh_from_db()
    assert (account.balance, account.version) == (1_250, 1)
    adjustment = BalanceAdjustment.objects.get(account=account)
    assert (adjustment.kind, adjustment.delta, adjustment.note) == (BalanceAdjustment.Kind.TOP_UP, 250, "gift")
    assert all(line.ok for line in services.audit(account_ids=[account.pk]))


def test_reset_action_refuses_a_negative_balance_and_changes_nothing(admin_client, make_account):
    account = make_account(balance=1_000)
    refused = admin_client.post(
        "/admin/ledger/account/",
        {"action": "reset_balance", "_selected_action": [account.pk], "apply": "1", "balance": "-5"},
    )
    assert refused.status_code == 200
    assert "must be a non-negative integer" in refused.content.decode()
    account.refresh_from_db()
    assert account.balance == 1_000 and not BalanceAdjustment.objects.exists()
    admin_client.post(
        "/admin/ledger/account/",
        {"action": "reset_balance", "_selected_action": [account.pk], "apply": "1", "balance": "40"},
    )
    account.refresh_from_db()
    assert account.balance == 40
    assert BalanceAdjustment.objects.get(account=account).delta == -960


def test_adding_an_account_opens_it_with_its_opening_balance(admin_client):
    response = admin_client.post("/admin/ledger/account/add/", {"name": "wallet", "balance": "500"})
    assert response.status_code == 302
    account = Account.objects.get(name="wallet")
    assert (account.balance, account.opening_balance, account.version) == (500, 500, 0)
    refused = admin_client.post("/admin/ledger/account/add/", {"name": "debt", "balance": "-1"})
    assert refused.status_code == 200 and not Account.objects.filter(name="debt").exists()


def form_fields(html: str) -> dict[str, str]:
    """The hidden inputs a browser would post back (the inline's management form)."""
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def test_changing_an_account_edits_its_name_only(admin_client, recorded_run):
    url = f"/admin/ledger/account/{recorded_run.account_id}/change/"
    posted = {**form_fields(admin_client.get(url).content.decode()), "name": "renamed", "balance": "1"}
    assert admin_client.post(url, posted).status_code == 302
    account = Account.objects.get(pk=recorded_run.account_id)
    assert (account.name, account.balance, account.version) == ("renamed", 50, 4)
    assert DeductionAttempt.objects.filter(account=account).count() == 5  # the inline changed nothing


def test_accounts_cannot_be_deleted(admin_client, make_account):
    account = make_account()
    assert admin_client.get(f"/admin/ledger/account/{account.pk}/delete/").status_code == 403


def test_account_page_shows_recent_attempts_audit_and_visualizer_link(admin_client, recorded_run):
    page = admin_client.get(f"/admin/ledger/account/{recorded_run.account_id}/change/").content.decode()
    assert "Recent attempts" in page and page.count('class="zbl-badge"') == 5
    assert "exact" in page  # the audit line
    assert reverse("visualize-account", args=[recorded_run.account_id]) in page
    listing = admin_client.get("/admin/ledger/account/").content.decode()
    assert f"?account={recorded_run.account_id}" in listing  # the attempts count links to them
