"""Prometheus and Grafana files: who may scrape, the alert rules and their unit tests, the dashboard —
and every metric they name is one the app really exports (collected from the app after exercising
every code path that counts something)."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
import yaml
from django.core.cache import cache
from prometheus_client.parser import text_string_to_metric_families

from ledger.api.breaker import database_breaker
from ledger.attack.engine import AttackPlan, run_attack
from strategies import registry
from tests.api.conftest import token_client, user_with_a_long_window
from tests.deploy.conftest import REPO, TOKEN_FILE, promtool

PROMETHEUS_DIR = REPO / "deploy/prometheus"
DASHBOARD = REPO / "deploy/grafana/dashboards/zero-balance-loss.json"
# What the issue asks the dashboard to show: a panel title each (lower case) must contain.
PANELS = [
    "tps per strategy",
    "p50 / p99 per strategy",
    "success rate",
    "balance loss",
    "lock wait",
    "retries",
    "lock waiters",
    "cache hit rate",
    "rate-limited",
    "circuit breaker",
    "requests per instance",
]


def ledger_job(prometheus: dict) -> dict:
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "ledger"]
    return job


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard_panels() -> list[dict]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may contain anything
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges (and Grafana's $__range)
    expr = _GROUPING.sub(" ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables elsewhere
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match[0].lower() in _KEYWORDS | {"inf", "nan"}:
            continue  # a function or aggregation, a keyword, a number
        if match.start() and expr[match.start() - 1].isdigit():
            continue  # the exponent or unit of a number (1e3)
        names.add(match[0])
    return names


def referenced_metrics() -> dict[str, set[str]]:
    """Every metric name the rules and the dashboard use → where."""
    used: dict[str, set[str]] = {}
    for name, rule in alert_rules().items():
        for metric in metric_names(rule["expr"]):
            used.setdefault(metric, set()).add(f"alerts.yml {name}")
    for panel in dashboard_panels():
        for target in panel["targets"]:
            for metric in metric_names(target["expr"]):
                used.setdefault(metric, set()).add(f"dashboard {panel['title']!r}")
    return used


def test_the_promql_reader_finds_metric_names_only():
    expr = (
        'histogram_quantile(0.99, sum by (strategy, le) (rate(a_bucket{x="y{z}"}[5m]))) > 1e3'
        " or on(strategy) absent(b_total) / ignoring(instance) c - time() + d[$__rate_interval]"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}


@pytest.fixture
def exposition(client, admin_client, settings) -> str:
    """/metrics after every counting code path ran in this process: attacks of every strategy with
    lock waits, retries, refusals and balance reads; a 429; breaker transitions; the live panel
    (Django cache gets); HTTP requests and database queries; the audit behind the balance loss."""
    for name in registry.names():
        run_attack(AttackPlan(strategy=name, requests=24, concurrency=6, balance=1_500, think_ms=2, read_ratio=0.25))
    settings.RATE_LIMIT_WRITES = "1/h"
    api = token_client(user_with_a_long_window("1/h"))
    account = api.post("/api/accounts/", {"name": "metrics", "balance": 100}, format="json").json()["id"]
    assert api.post(f"/api/accounts/{account}/deductions/", {"amount": 1}, format="json").status_code == 429
    database_breaker.cache_clear()
    database_breaker()._breaker.open()
    database_breaker()._breaker.close()
    database_breaker.cache_clear()
    assert admin_client.get("/live/status/").status_code == 200
    assert client.get("/metrics").status_code == 200  # its audit reads and stores through the cache
    response = client.get("/metrics")
    assert response.status_code == 200
    cache.clear()
    return response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_every_metric_the_dashboard_and_the_rules_use_is_one_the_app_exports(exposition):
    exported = {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}
    missing = {name: sorted(where) for name, where in referenced_metrics().items() if name not in exported}
    assert missing == {}
    assert {"ledger_deductions_total", "ledger_balance_loss_minor_units", "ledger_lock_waiters"} <= set(
        referenced_metrics()
    )


@pytest.mark.django_db(transaction=True)
def test_the_ledger_metrics_follow_prometheus_naming_conventions(exposition):
    ours = "".join("# HELP " + family for family in exposition.split("# HELP ")[1:] if family.startswith("ledger_"))
    result = promtool("check", "metrics", stdin=ours)
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_prometheus_scrapes_with_the_token_compose_gives_the_apps(compose, prometheus):
    authorization = ledger_job(prometheus)["authorization"]
    assert authorization == {"type": "Bearer", "credentials_file": TOKEN_FILE}
    secret = TOKEN_FILE.rsplit("/", 1)[1]
    assert compose.services["prometheus"]["secrets"] == [secret]
    assert compose.data["secrets"][secret] == {"environment": "METRICS_TOKEN"}
    for name in compose.app_services:
        assert compose.environment(name)["METRICS_TOKEN"] == "<METRICS_TOKEN>"  # required from .env, never defaulted


def test_only_prometheus_address_may_read_the_metrics(compose):
    network = ipaddress.ip_network(compose.data["networks"]["default"]["ipam"]["config"][0]["subnet"])
    prometheus = ipaddress.ip_address(compose.services["prometheus"]["networks"]["default"]["ipv4_address"])
    others = [
        ipaddress.ip_address(compose.services["nginx"]["networks"]["default"]["ipv4_address"]),
        network.network_address + 1,  # the gateway: requests through the published ports on the host
    ]
    assert prometheus in network
    for name in compose.app_services:
        allowed = [ipaddress.ip_network(n) for n in compose.environment(name)["METRICS_ALLOWED_NETWORKS"].split(",")]
        assert any(prometheus in n for n in allowed)
        assert not any(other in n for n in allowed for other in others)


def test_rules_are_loaded_by_prometheus_and_pass_promtool(prometheus):
    assert prometheus["rule_files"] == ["alerts.yml"]
    promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))


def test_the_rules_unit_tests_pass_promtool():
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "alerts.test.yml"))
    assert "SUCCESS" in result.stdout


def test_the_alerts_the_issue_asks_for_exist_with_a_severity_and_a_summary():
    rules = alert_rules()
    assert {
        "LedgerBalanceLoss",
        "LedgerCircuitBreakerOpen",
        "LedgerHttpErrorRatioHigh",
        "LedgerDeductionErrorRatioHigh",
        "LedgerDeductionLatencyP99High",
    } <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
    assert 'safe="true"' in rules["LedgerBalanceLoss"]["expr"]


def test_the_rules_unit_tests_prove_the_balance_loss_alert_fires_for_a_correct_strategy_only():
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())["tests"]
    cases = [
        (test, case) for test in tests for case in test["alert_rule_test"] if case["alertname"] == "LedgerBalanceLoss"
    ]
    fired = {alert["exp_labels"]["strategy"] for _, case in cases for alert in case["exp_alerts"]}
    assert "atomic" in fired
    losing_unsafe = {
        re.search(r'strategy="([^"]+)"', series["series"])[1]
        for test, _ in cases
        for series in test["input_series"]
        if 'safe="false"' in series["series"] and not series["values"].startswith("0")
    }
    assert {"no-lock", "mutex"} <= losing_unsafe and not losing_unsafe & fired


def test_the_dashboard_has_the_panels_the_issue_lists_on_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "zero-balance-loss" and dashboard["title"] == "Zero Balance Loss"
    titles = [panel["title"].lower() for panel in dashboard_panels()]
    for wanted in PANELS:
        assert any(wanted in title for title in titles), wanted
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
