"""Plain Django views (not the API): health, the landing page, the admin's extra pages, the visualizers."""

from __future__ import annotations

import functools
import hmac
import ipaddress

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.response import TemplateResponse
from django.urls import Resolver404, resolve
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_redis import get_redis_connection
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ledger import metrics as ledger_metrics
from ledger import selectors, status
from ledger.attack import launcher
from ledger.attack.report import format_value, run_report, table_rows
from ledger.errors import UnknownStrategy
from ledger.forms import LaunchAttackForm
from ledger.models import Account, AttackRun
from ledger.services import current_instance_id
from strategies import registry


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    get_redis_connection("default").ping()


HEALTH_CHECKS = {"database": _check_database, "redis": _check_redis}


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """For load balancers: 200 when the database and Redis answer, 503 naming what failed."""
    checks = {}
    for name, check in HEALTH_CHECKS.items():
        try:
            check()
            checks[name] = {"ok": True}
        except Exception as failure:  # noqa: BLE001 - any failure means "not healthy", reported by name
            checks[name] = {"ok": False, "error": f"{type(failure).__name__}: {failure}"}
    healthy = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "instance": current_instance_id(), "checks": checks},
        status=200 if healthy else 503,
    )


@functools.cache
def _metrics_networks(networks: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(network, strict=False) for network in networks]


def metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    """Why a request may not read /metrics (403: not from METRICS_ALLOWED_NETWORKS; 401: without
    the METRICS_TOKEN bearer token), or None. The address is the TCP peer (REMOTE_ADDR), never a
    forwarded header a client could write."""
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    networks = _metrics_networks(tuple(settings.METRICS_ALLOWED_NETWORKS))
    if address is None or not any(address in network for network in networks):
        return HttpResponse("metrics: this address may not read them\n", status=403, content_type="text/plain")
    if settings.METRICS_TOKEN:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = settings.METRICS_TOKEN.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            refused = HttpResponse("metrics: bearer token required\n", status=401, content_type="text/plain")
            refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return refused
    return None


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus scrapes each instance here: its workers' metrics summed, plus the ledger-wide ones.

    The classic text format, which Prometheus 2 accepts whatever else it offers: the answer is two
    registries' output concatenated, which OpenMetrics (one `# EOF` at the end) would not allow.
    """
    refused = metrics_refusal(request)
    return refused or HttpResponse(ledger_metrics.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@never_cache
@require_GET
def bench_hello(request: HttpRequest) -> JsonResponse:
    """bench/'s HTTP ceiling: the same gunicorn, WSGI and middleware as the API, and nothing else
    (no database, no Redis, no authentication). Not found unless BENCH_HELLO_VIEW is on."""
    if not settings.BENCH_HELLO_VIEW:
        raise Http404("Not found.")
    return JsonResponse({"hello": "world", "instance": current_instance_id()})


def _admin_context(request: HttpRequest, title: str) -> dict:
    """What the admin's base template needs, for pages that look like the admin."""
    return {**admin.site.each_context(request), "title": title, "is_nav_sidebar_enabled": False}


def landing(request: HttpRequest) -> HttpResponse:
    """`/`: what the project is, the strategies in a few lines each, where to go next."""
    try:
        resolve("/api/docs/")
        api_docs = "/api/docs/"
    except Resolver404:
        api_docs = ""  # the HTTP API is not installed in this build
    return render(
        request,
        "ledger/landing.html",
        {
            **_admin_context(request, "Zero Balance Loss"),
            "strategies": registry.all_strategies(),
            "api_docs": api_docs,
            "default_strategy": settings.LEDGER_DEFAULT_STRATEGY,
        },
    )


@staff_member_required
@never_cache
@require_GET
def live_status(request: HttpRequest) -> JsonResponse:
    """The admin index's live panel: every status provider's entry (see ledger/status.py)."""
    return JsonResponse({"entries": status.collect(), "instance": current_instance_id()})


def _report_rows(reports: list[dict], extra: list[tuple[str, str]] = ()) -> list[dict]:
    """The attack table as `manage.py attack` prints it: one row per figure, a column per run."""
    labels = table_rows(reports)
    labels[2:2] = extra  # right after requests and succeeded
    return [
        {
            "label": label,
            "key": key,
            "cells": [
                {"text": format_value(key, report[key]), "alert": key == "balance_loss" and bool(report[key])}
                for report in reports
            ],
        }
        for label, key in labels
    ]


def launch(request: HttpRequest, context: dict) -> HttpResponse:
    """The admin's "Launch attack" form; starts the attack in the background and redirects."""
    running = launcher.current()
    http_status = 200
    if request.method == "POST":
        form = LaunchAttackForm(request.POST)
        if form.is_valid():
            try:
                state = launcher.launch(
                    form.launch_request(), strategies=form.strategies(), user=request.user.get_username()
                )
            except launcher.LaunchInProgress as busy:
                form.add_error(None, str(busy))
                running, http_status = busy.running, 409
            else:
                return redirect("admin:ledger_attackrun_launch_progress", state["id"])
        else:
            http_status = 400
    else:
        form = LaunchAttackForm()
    return TemplateResponse(
        request,
        "admin/ledger/attackrun/launch.html",
        {**context, "form": form, "running": running, "strategies": registry.all_strategies()},
        status=http_status,
    )


def launch_progress(request: HttpRequest, launch_id: str, context: dict) -> HttpResponse:
    """Progress of a launch while it runs; its results table (as the CLI prints it) when done."""
    state = launcher.state_of(launch_id)
    if state is None:
        raise Http404("No such launch (launches are kept for a week).")
    runs = selectors.runs_by_ids(run["run_id"] for run in state["runs"] if run["run_id"])
    rows = _report_rows([run_report(run) for run in runs]) if runs else []
    return TemplateResponse(
        request,
        "admin/ledger/attackrun/launch_progress.html",
        {
            **context,
            "state": state,
            "runs": runs,
            "rows": rows,
            "compare_ids": ",".join(str(run.pk) for run in runs),
            "running": state["status"] in ("starting", "running"),
        },
    )


def launch_state(request: HttpRequest, launch_id: str) -> JsonResponse:
    state = launcher.state_of(launch_id)
    if state is None:
        return JsonResponse({"error": "no such launch"}, status=404)
    return JsonResponse(state)


@staff_member_required
def visualize_index(request: HttpRequest) -> HttpResponse:
    runs = selectors.recent_runs(limit=30)
    return render(
        request,
        "ledger/visualize_index.html",
        {
            **_admin_context(request, "Visualizers"),
            "runs": runs,
            "latest_ids": ",".join(str(run.pk) for run in selectors.latest_run_per_strategy()),
        },
    )


def _timeline_page(request: HttpRequest, *, title: str, timeline: selectors.Timeline, subject: dict) -> HttpResponse:
    return render(
        request,
        "ledger/timeline.html",
        {
            **_admin_context(request, title),
            "timeline": timeline,
            "summary": selectors.timeline_summary(timeline),
            "drawing": timeline.as_json(),
            **subject,
        },
    )


@staff_member_required
def visualize_run(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(AttackRun, pk=run_id)
    try:
        strategy = registry.get(run.strategy)
    except UnknownStrategy:
        strategy = None  # a run of a strategy this build no longer has
    return _timeline_page(
        request,
        title=f"Run {run.pk} · {run.strategy}",
        timeline=selectors.run_timeline(run_id=run.pk),
        subject={"run": run, "strategy": strategy, "success_rate": selectors.success_rate(run)},
    )


@staff_member_required
def visualize_account(request: HttpRequest, account_id: int) -> HttpResponse:
    account = get_object_or_404(Account, pk=account_id)
    return _timeline_page(
        request,
        title=f"Account {account.name}",
        timeline=selectors.account_timeline(account_id=account.pk),
        subject={"account": account},
    )


@staff_member_required
def compare(request: HttpRequest) -> HttpResponse:
    """Charts of TPS, p99, success rate and balance loss for the runs in ?runs=1,2,3."""
    raw = request.GET.get("runs", "")
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    if not ids or not all(part.isdigit() for part in ids):
        return render(
            request,
            "ledger/compare.html",
            {**_admin_context(request, "Compare runs"), "error": "Give ?runs= a comma-separated list of run ids."},
            status=400,
        )
    runs = selectors.runs_by_ids(int(part) for part in ids)
    reports = [{**run_report(run), "success_rate": selectors.success_rate(run)} for run in runs]
    rows = _report_rows(reports, extra=[("success rate %", "success_rate")])
    chart = {
        "labels": [f"{run.strategy} · run {run.pk}" for run in runs],
        "series": {
            key: [report[key] for report in reports] for key in ("tps", "p99_ms", "success_rate", "balance_loss")
        },
    }
    return render(
        request,
        "ledger/compare.html",
        {
            **_admin_context(request, "Compare runs"),
            "runs": runs,
            "rows": rows,
            "chart": chart,
            "missing": len(ids) - len(runs),
        },
    )
