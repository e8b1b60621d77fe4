"""Where the API's protections are counted: one function per event (logged, and in Prometheus)."""

from __future__ import annotations

import logging

from ledger import metrics

logger = logging.getLogger("ledger.api.protection")


def rate_limited(*, group: str, limit: int) -> None:
    """A request was refused with 429 (called once per refused request)."""
    logger.info("rate limited: group=%s limit=%s", group, limit)
    metrics.RATE_LIMITED.labels(group).inc()


def breaker_transition(*, name: str, old_state: str, new_state: str) -> None:
    """The circuit breaker changed state (called by the process that changed it)."""
    logger.warning("circuit breaker %s: %s -> %s", name, old_state, new_state)
    metrics.BREAKER_TRANSITIONS.labels(name, old_state, new_state).inc()
