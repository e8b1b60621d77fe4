"""The admin's live panel: one entry per subsystem, each supplied by a status provider.

A provider is a function that returns a `StatusEntry`, or None when it has nothing to show
(no runs yet, subsystem not configured). The panel renders exactly the entries it gets,
in the order of PROVIDERS. A subsystem adds its entry by adding one dotted path here:

* lock waiters (metrics issue): the waiters gauge, per strategy;
* cache hit rate (cache issue): hits ÷ (hits + misses) of the balance reads;
* rate limiter and circuit breaker (API issue): limit and recent 429s, breaker state.

They are not listed yet because their data does not exist yet; the panel does not invent it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.urls import reverse
from django.utils.module_loading import import_string

from ledger import selectors
from ledger.attack import launcher
from ledger.attack.report import format_value
from strategies import registry

log = logging.getLogger(__name__)

PROVIDERS: list[str] = [
    "ledger.status.default_strategy",
    "ledger.status.attack_in_progress",
    "ledger.status.last_runs",
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
