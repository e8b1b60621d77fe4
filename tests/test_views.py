"""The landing page, the visualizers and the comparison page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.urls import Resolver404, resolve
from django.utils.html import escape

from ledger.models import DeductionAttempt, Outcome
from strategies import registry

pytestmark = pytest.mark.django_db


def embedded_json(html: str, element_id: str) -> dict:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def test_landing_page_explains_every_strategy_and_links_onwards(client):
    page = client.get("/").content.decode()
    for strategy in registry.all_strategies():
        assert escape(strategy.description()) in page
    assert 'href="/admin/"' in page and 'href="/visualize/"' in page
    try:
        resolve("/api/docs/")
        api_installed = True
    except Resolver404:
        api_installed = False
    assert ('href="/api/docs/"' in page) == api_installed  # linked when the HTTP API is there, never a dead link


def test_visualizers_are_for_staff_only(client, recorded_run):
    for url in ["/visualize/", f"/visualize/runs/{recorded_run.pk}/", f"/visualize/compare/?runs={recorded_run.pk}",
                f"/visualize/accounts/{recorded_run.account_id}/"]:  # fmt: skip
        assert client.get(url).status_code == 302, url


def test_run_timeline_draws_every_attempt_and_explains_the_retries(admin_client, recorded_run):
    DeductionAttempt.objects.filter(pk=DeductionAttempt.objects.filter(attack_run=recorded_run).first().pk).update(
        retries=2, events=[{"t_us": 5, "event": "conflict", "version": 0}, {"t_us": 6, "event": "retry"}]
    )
    page = admin_client.get(f"/visualize/runs/{recorded_run.pk}/").content.decode()
    drawing = embedded_json(page, "timeline-data")
    assert len(drawing["attempts"]) == 5 and drawing["lost_updates"] == []
    assert 'id="explain-retries"' in page and 'id="explain-lost"' not in page
    assert escape(registry.get("optimistic").description()) in page


def test_run_timeline_highlights_and_lists_lost_updates(admin_client, recorded_run):
    first, second = DeductionAttempt.objects.filter(attack_run=recorded_run, outcome=Outcome.SUCCEEDED)[:2]
    # As no-lock records it: both read the same version and both wrote the next one.
    DeductionAttempt.objects.filter(pk=first.pk).update(
        version_before=second.version_before, version_after=second.version_after
    )
    page = admin_client.get(f"/visualize/runs/{recorded_run.pk}/").content.decode()
    assert 'id="explain-lost"' in page
    groups = re.findall(r'<li class="zbl-group" data-group="(\d+)">', page)
    assert groups == ["0"]
    assert 'class="zbl-chip forked"' in page  # the version both wrote, in the version chain
    drawing = embedded_json(page, "timeline-data")
    assert sorted(drawing["lost_updates"][0]["attempts"]) == sorted([first.pk, second.pk])


def test_account_timeline_renders(admin_client, recorded_run):
    page = admin_client.get(f"/visualize/accounts/{recorded_run.account_id}/").content.decode()
    assert len(embedded_json(page, "timeline-data")["attempts"]) == 5


def test_unknown_run_or_account_is_404(admin_client):
    assert admin_client.get("/visualize/runs/999999/").status_code == 404
    assert admin_client.get("/visualize/accounts/999999/").status_code == 404


def test_comparison_page_charts_and_tabulates_the_selected_runs(admin_client, recorded_run):
    page = admin_client.get(f"/visualize/compare/?runs={recorded_run.pk}").content.decode()
    chart = embedded_json(page, "compare-data")
    assert chart["labels"] == [f"optimistic · run {recorded_run.pk}"]
    assert chart["series"] == {"tps": [100.0], "p99_ms": [2.0], "success_rate": [60.0], "balance_loss": [0]}
    assert "chart.umd.min.js" in page and "cdn" not in page.lower()
    assert 'id="compare-table"' in page and "success rate %" in page


@pytest.mark.parametrize("runs", ["", "1,x", "-1"])
def test_comparison_page_refuses_a_malformed_run_list(admin_client, runs):
    response = admin_client.get(f"/visualize/compare/?runs={runs}")
    assert response.status_code == 400
    assert "comma-separated list of run ids" in response.content.decode()


def test_visualizer_index_links_the_latest_run_of_each_strategy(admin_client, recorded_run):
    page = admin_client.get("/visualize/").content.decode()
    assert f"/visualize/compare/?runs={recorded_run.pk}" in page
    assert f"/visualize/runs/{recorded_run.pk}/" in page


def test_chart_js_is_vendored_with_its_licence():
    from django.contrib.staticfiles import finders

    script = finders.find("ledger/vendor/chartjs/chart.umd.min.js")
    assert script and "Chart.js v4.6.1" in Path(script).read_text()[:300]
    assert finders.find("ledger/vendor/chartjs/LICENSE.md")
