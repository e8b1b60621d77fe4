"""The admin's live panel: one entry per subsystem, each supplied by a status provider.

A provider is a function that returns a `StatusEntry`, or None when it has nothing to show
(no runs yet, subsystem not configured). The panel renders exactly the entries it gets,
in the order of PROVIDERS. A subsystem adds its entry by adding one dotted path here.

Where each entry's numbers come from, and how far they are true:

* lock waiters, cache hit rate, 429s: the Prometheus metrics of the instance that answers the
  panel, summed over all its worker processes (prometheus_client's multiprocess files, as its
  /metrics reports them); without PROMETHEUS_MULTIPROC_DIR (runserver), this process only.
  Each entry says which. Other instances' counts are in Prometheus, not here.
* circuit breaker: its shared state in Redis, the same for every process and instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.urls import reverse
from django.utils.module_loading import import_string

from ledger import metrics, selectors
from ledger.api.breaker import database_breaker
from ledger.attack import launcher
from ledger.attack.report import format_value
from strategies import registry

log = logging.getLogger(__name__)

PROVIDERS: list[str] = [
    "ledger.status.default_strategy",
    "ledger.status.attack_in_progress",
    "ledger.status.last_runs",
    # Metrics issue: live numbers of the instance (Prometheus metrics) and the shared breaker state.
    "ledger.status.lock_waiters",
    "ledger.status.cache_hit_rate",
    "ledger.status.rate_limiter",
    "ledger.status.circuit_breaker",
]


@dataclass(frozen=True)
class StatusEntry:
    key: str
    label: str
    value: str
    detail: str = ""
    level: str = "info"  # info | ok | warning | error: the colour of the entry
    progress: dict | None = None  # {"done": n, "total": n, "label": "..."}
    table: dict | None = None  # {"columns": [...], "rows": [[cell, ...], ...], "links": [url|None, ...]}
    link: str = ""
    extra: dict = field(default_factory=dict)


def collect(providers: list[str] | None = None) -> list[dict]:
    """Every provider's entry, as JSON-ready dicts; a failing provider shows as its error."""
    entries = []
    for path in PROVIDERS if providers is None else providers:
        try:
            provider: Callable[[], StatusEntry | None] = import_string(path)
            entry = provider()
        except Exception as failure:  # one broken subsystem must not blank the panel
            log.exception("status provider %s failed", path)
            entry = StatusEntry(key=path, label=path.rsplit(".", 1)[-1], value="unavailable", level="error",
                                detail=f"{type(failure).__name__}: {failure}")  # fmt: skip
        if entry is not None:
            entries.append(asdict(entry))
    return entries


def default_strategy() -> StatusEntry:
    strategy = registry.get(settings.LEDGER_DEFAULT_STRATEGY)
    return StatusEntry(
        key="default_strategy",
        label="Strategy in use by default",
        value=strategy.name,
        detail=strategy.description(),
        level="ok" if strategy.safe_across_processes else "warning",
        extra={"safe_across_processes": strategy.safe_across_processes},
    )


def attack_in_progress() -> StatusEntry | None:
    state = launcher.current()
    if state is None:
        return None
    runs = state["runs"]
    done = sum(run["done"] for run in runs)
    total = sum(run["total"] for run in runs)
    current = next((run for run in runs if run["run_id"] is None), runs[-1])
    return StatusEntry(
        key="attack_in_progress",
        label="Attack in progress",
        value=f"{current['strategy']} ({len([r for r in runs if r['run_id']]) + 1} of {len(runs)})",
        detail=f"launched by {state['user'] or 'someone'}",
        progress={"done": done, "total": total, "label": f"{done:,} of {total:,} deductions"},
        link=reverse("admin:ledger_attackrun_launch_progress", args=[state["id"]]),
    )


def last_runs(limit: int = 6) -> StatusEntry | None:
    runs = selectors.recent_runs(limit=limit)
    if not runs:
        return None
    losing = [run for run in runs if run.balance_loss]
    return StatusEntry(
        key="last_runs",
        label="Last runs and their loss",
        value=f"{len(losing)} of the last {len(runs)} lost money" if losing else f"no loss in the last {len(runs)}",
        level="error" if losing else "ok",
        table={
            "columns": ["run", "strategy", "status", "TPS", "p99 ms", "success %", "balance loss"],
            "rows": [
                [
                    run.pk,
                    run.strategy,
                    run.status,
                    format_value("tps", run.tps),
                    format_value("p99_ms", run.p99_ms),
                    format_value("success_rate", selectors.success_rate(run)),
                    format_value("balance_loss", run.balance_loss),
                ]
                for run in runs
            ],
            "links": [reverse("visualize-run", args=[run.pk]) for run in runs],
            "alerts": [bool(run.balance_loss) for run in runs],
        },
    )


def _totals(family: str, label: str) -> dict[str, float]:
    """A counter's or gauge's current value per value of `label`, for this instance."""
    return {
        sample.labels[label]: sample.value for sample in metrics.samples(family) if not sample.name.endswith("_created")
    }


def lock_waiters() -> StatusEntry:
    waiting = {name: int(count) for name, count in _totals("ledger_lock_waiters", "strategy").items()}
    total = sum(waiting.values())
    order = {name: position for position, name in enumerate(registry.names())}
    return StatusEntry(
        key="lock_waiters",
        label="Lock waiters now",
        value=f"{total:,} waiting" if total else "nobody waiting",
        detail=f"deductions queued for a lock; {metrics.scope()}",
        level="warning" if total else "ok",
        table={
            "columns": ["strategy", "waiting"],
            "rows": [[name, count] for name, count in sorted(waiting.items(), key=lambda item: order.get(item[0], 99))],
        }
        if waiting
        else None,
        extra={"waiting": waiting},
    )


def cache_hit_rate() -> StatusEntry | None:
    events = _totals("ledger_balance_cache_events", "event")
    cached = events.get("hit", 0) + events.get("coalesced", 0)
    reads = cached + events.get("miss", 0) + events.get("fallback", 0)
    if not reads:
        return None  # no balance read yet: there is no rate to show
    rate = cached / reads
    return StatusEntry(
        key="cache_hit_rate",
        label="Balance cache hit rate",
        value=f"{rate:.1%}",
        detail=(
            f"{int(cached):,} of {int(reads):,} balance reads answered from Redis"
            f" ({int(events.get('fallback', 0)):,} from the database while Redis was unavailable); {metrics.scope()}"
        ),
        level="ok" if rate >= 0.9 else "warning",
        extra={"hit_rate": rate, "reads": int(reads)},
    )


def rate_limiter() -> StatusEntry:
    refused = {group: int(count) for group, count in _totals("ledger_rate_limited_requests", "group").items()}
    total = sum(refused.values())
    return StatusEntry(
        key="rate_limiter",
        label="Rate limiter",
        value=f"writes {settings.RATE_LIMIT_WRITES or 'unlimited'} · reads {settings.RATE_LIMIT_READS or 'unlimited'}",
        detail=f"{total:,} requests refused with 429 since start"
        + (f" ({', '.join(f'{group}: {count:,}' for group, count in sorted(refused.items()))})" if total else "")
        + f"; per {settings.RATE_LIMIT_KEY}, shared by every instance through Redis; 429s counted on {metrics.scope()}",
        level="warning" if total else "ok",
        extra={"refused": refused},
    )


def circuit_breaker() -> StatusEntry:
    breaker = database_breaker()
    state = breaker.state
    calls, failures = breaker.window.counts()
    detail = (
        f"database breaker, shared by every instance through Redis; this {settings.BREAKER_WINDOW_S} s window:"
        f" {calls:,} calls, {failures:,} failed (trips at ≥ {settings.BREAKER_MIN_CALLS} calls and"
        f" ≥ {settings.BREAKER_FAILURE_RATIO:.0%} failed)"
    )
    if state == "open":
        detail = f"deductions refused with 503; trial requests in {breaker.retry_after()} s. " + detail
    return StatusEntry(
        key="circuit_breaker",
        label="Circuit breaker",
        value=state,
        detail=detail,
        level={"closed": "ok", "half-open": "warning"}.get(state, "error"),
        extra={"state": state, "window_calls": calls, "window_failures": failures},
    )
