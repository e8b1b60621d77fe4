"""What a new user does, in a real browser: launch, watch, compare, understand the loss."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from ledger.attack.engine import AttackPlan, run_attack
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_new_user_launches_every_strategy_compares_them_and_sees_the_lost_updates(context, admin_page):
    index = admin_page
    expect(index.locator("#live-panel [data-key=default_strategy]")).to_be_visible()
    expect(index.locator("#live-panel [data-key=last_runs]")).to_have_count(0)  # nothing has run yet

    launch = context.new_page()
    launch.goto("/admin/ledger/attackrun/launch/")
    expect(launch.locator("#id_mode")).to_have_value("all")
    launch.fill("#id_requests", "60")
    launch.fill("#id_concurrency", "8")
    launch.fill("#id_think_ms", "5")  # widens the race window: no-lock loses every time
    launch.click("#launch-submit")
    expect(launch.locator(".zbl-progress-table tbody tr")).to_have_count(6)
    expect(launch.locator("#launch-results")).to_be_visible(timeout=120_000)
    expect(launch.locator("#launch-status")).to_have_text("finished")
    screenshot(launch, "launch-results")

    # The index page was never reloaded: its live panel picked the runs up by itself.
    last_runs = index.locator("#live-panel [data-key=last_runs]")
    expect(last_runs).to_contain_text("no-lock", timeout=15_000)
    expect(last_runs.locator("tr.alert")).to_contain_text("no-lock")
    screenshot(index, "admin-index-live-panel")

    launch.click("#compare-link")
    expect(launch.locator("body[data-charts-ready=true]")).to_have_count(1)
    for key in ("tps", "p99_ms", "success_rate", "balance_loss"):
        box = launch.locator(f"#chart-{key}").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, key
    expect(launch.locator("#compare-table .row-balance_loss td.zbl-loss")).to_have_count(1)
    screenshot(launch, "compare")

    launch.go_back()
    launch.locator("#launch-results thead a", has_text="no-lock").click()
    expect(launch.locator("#explain-lost")).to_be_visible()
    lost = launch.locator("#timeline svg g.attempt.lost")
    expect(lost.first).to_be_visible()
    assert lost.count() >= 2  # the explained group: attempts that read one version and all wrote
    expect(launch.locator("#timeline svg polyline.lost-link")).to_have_count(1)
    expect(launch.locator("#focus-label")).to_contain_text(re.compile(r"read version \d+ and all wrote"))
    screenshot(launch, "timeline-no-lock")

    launch.click("button[data-focus=all]")
    assert launch.locator("#timeline svg g.attempt").count() == 60
    assert context.console_errors == []


def test_attempt_changelist_filters_and_leads_to_the_attempt_on_its_timeline(context, admin_page):
    run = run_attack(AttackPlan(strategy="optimistic", requests=30, concurrency=4, think_ms=2, balance=100_000))
    page = admin_page
    page.goto("/admin/ledger/deductionattempt/")
    expect(page.locator("#result_list tbody tr")).to_have_count(30)
    page.locator("#changelist-filter").get_by_role("link", name="optimistic", exact=True).click()
    expect(page.locator(".paginator")).to_contain_text("30 deduction attempts")
    expect(page.locator("#result_list .zbl-badge").first).to_be_visible()
    screenshot(page, "attempt-changelist")

    page.locator("#result_list tbody tr th a").first.click()
    page.click("text=show it on the timeline")
    expect(page.locator("#timeline svg g.attempt.highlight")).to_have_count(1)
    assert page.url.endswith(f"/visualize/runs/{run.pk}/#attempt-" + page.url.rsplit("-", 1)[-1])
    screenshot(page, "timeline-attempt")
    assert context.console_errors == []
