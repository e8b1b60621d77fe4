"""Reads from the ledger. Views, the API and the attack's readers call these, never the ORM directly."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import QuerySet

from ledger import balance_cache
from ledger.models import AttackRun, DeductionAttempt, Outcome
from strategies import registry
from strategies.base import read_balance


@dataclass(frozen=True)
class BalanceRead:
    """A balance as some reader saw it, with the version it belongs to and where it came from."""

    account_id: int
    balance: int
    version: int
    source: str  # balance_cache.CACHE, DATABASE (a miss, or the cache is off) or FALLBACK (Redis down)


def balance(*, account_id: int) -> BalanceRead:
    """The current balance of an account, for display only: no strategy decides from it.

    Read through the cache-aside layer (ledger.balance_cache): once a balance change has
    committed, no read returns an older version. Raises AccountNotFound.
    """
    amount, version, source = balance_cache.read(account_id, read_balance)
    return BalanceRead(account_id=account_id, balance=amount, version=version, source=source)


# The timeline draws every attempt as a bar; past a few thousand bars it stops being readable.
TIMELINE_MAX_ATTEMPTS = 2000


@dataclass(frozen=True)
class LostUpdateGroup:
    """Succeeded attempts that read the same version of the same account and all wrote.

    Each write overwrote the others (the write is blind, computed from the stale read), so
    the balance reflects at most one of these deductions: the last one written.
    """

    account_id: int
    version_read: int
    attempt_ids: tuple[int, ...]  # in the order they wrote
    amounts: tuple[int, ...]

    @property
    def survivor_id(self) -> int:
        return self.attempt_ids[-1]

    @property
    def overwritten_ids(self) -> tuple[int, ...]:
        return self.attempt_ids[:-1]

    @property
    def overwritten_amount(self) -> int:
        return sum(self.amounts[:-1])


def lost_update_groups(attempts: Iterable[DeductionAttempt]) -> list[LostUpdateGroup]:
    """Group the succeeded attempts that read the same version of one account (size ≥ 2)."""
    by_version: dict[tuple[int, int], list[DeductionAttempt]] = defaultdict(list)
    for attempt in attempts:
        if attempt.outcome == Outcome.SUCCEEDED and attempt.version_before is not None:
            by_version[(attempt.account_id, attempt.version_before)].append(attempt)
    groups = []
    for (account_id, version), members in sorted(by_version.items()):
        if len(members) < 2:
            continue
        members.sort(key=lambda a: (a.written_at or a.finished_at, a.pk))
        groups.append(
            LostUpdateGroup(
                account_id=account_id,
                version_read=version,
                attempt_ids=tuple(a.pk for a in members),
                amounts=tuple(a.amount for a in members),
            )
        )
    return groups


def conflict_causes(attempts: Iterable[DeductionAttempt]) -> dict[int, list[dict]]:
    """For each attempt that hit a version conflict: which attempt wrote the version it missed.

    A conflict on version v means someone else wrote v+1 first; among the attempts shown,
    that is the succeeded one that read v. None when the writer is not among them (another
    run, or a top-up/reset).
    """
    attempts = list(attempts)
    writer = {
        (a.account_id, a.version_before): a.pk
        for a in attempts
        if a.outcome == Outcome.SUCCEEDED and a.version_before is not None
    }
    causes: dict[int, list[dict]] = {}
    for attempt in attempts:
        for event in attempt.events or []:
            if event.get("event") == "conflict" and "version" in event:
                causes.setdefault(attempt.pk, []).append(
                    {"version": event["version"], "by": writer.get((attempt.account_id, event["version"]))}
                )
    return causes


@dataclass(frozen=True)
class Timeline:
    """Everything the visualizer draws for a set of attempts (one run, or one account)."""

    attempts: list[DeductionAttempt]
    truncated: bool
    lost_updates: list[LostUpdateGroup]
    conflicts: dict[int, list[dict]]

    def version_chain(self) -> list[dict]:
        """Each version written by the succeeded attempts shown, with its writers (≥ 2: forked)."""
        writers: dict[int, list[int]] = defaultdict(list)
        for attempt in self.attempts:
            if attempt.outcome == Outcome.SUCCEEDED and attempt.version_after is not None:
                writers[attempt.version_after].append(attempt.pk)
        return [
            {"version": version, "writers": ids, "forked": len(ids) > 1} for version, ids in sorted(writers.items())
        ]

    @property
    def instances(self) -> list[str]:
        return sorted({a.instance_id for a in self.attempts})

    def as_json(self) -> dict:
        """The drawing data: times in µs from the first attempt's start."""
        origin = min((a.started_at for a in self.attempts), default=None)

        def offset_us(moment) -> int | None:
            return None if moment is None else int((moment - origin).total_seconds() * 1_000_000)

        group_of = {pk: index for index, group in enumerate(self.lost_updates) for pk in group.attempt_ids}
        return {
            "attempts": [
                {
                    "id": a.pk,
                    "account": a.account_id,
                    "strategy": a.strategy,
                    "outcome": a.outcome,
                    "amount": a.amount,
                    "instance": a.instance_id,
                    "start": offset_us(a.started_at),
                    "end": offset_us(a.finished_at),
                    "balance_before": a.balance_before,
                    "balance_after": a.balance_after,
                    "version_before": a.version_before,
                    "version_after": a.version_after,
                    "retries": a.retries,
                    "lock_wait_us": a.lock_wait_us,
                    "events": [{**e, "t_us": offset_us(a.started_at) + e.get("t_us", 0)} for e in a.events or []],
                    "lost_group": group_of.get(a.pk),
                    "conflicts": self.conflicts.get(a.pk, []),
                    "error": a.error,
                }
                for a in self.attempts
            ],
            "lost_updates": [
                {
                    "account": g.account_id,
                    "version_read": g.version_read,
                    "attempts": list(g.attempt_ids),
                    "survivor": g.survivor_id,
                    "overwritten_amount": g.overwritten_amount,
                }
                for g in self.lost_updates
            ],
            "instances": self.instances,
        }


def _timeline(attempts: QuerySet[DeductionAttempt], *, newest: bool = False) -> Timeline:
    ordered = attempts.order_by("-started_at" if newest else "started_at", "-pk" if newest else "pk")
    rows = list(ordered[: TIMELINE_MAX_ATTEMPTS + 1])
    truncated = len(rows) > TIMELINE_MAX_ATTEMPTS
    rows = sorted(rows[:TIMELINE_MAX_ATTEMPTS], key=lambda a: (a.started_at, a.pk))
    return Timeline(
        attempts=rows, truncated=truncated, lost_updates=lost_update_groups(rows), conflicts=conflict_causes(rows)
    )


def run_timeline(*, run_id: int) -> Timeline:
    """The attempts of one attack run (the first TIMELINE_MAX_ATTEMPTS of them)."""
    return _timeline(DeductionAttempt.objects.filter(attack_run_id=run_id))


def account_timeline(*, account_id: int) -> Timeline:
    """The latest TIMELINE_MAX_ATTEMPTS attempts on one account, whatever run they belong to."""
    return _timeline(DeductionAttempt.objects.filter(account_id=account_id), newest=True)


def recent_runs(*, limit: int = 10) -> list[AttackRun]:
    return list(AttackRun.objects.order_by("-pk")[:limit])


def runs_by_ids(run_ids: Iterable[int]) -> list[AttackRun]:
    """The runs asked for, in the order asked, skipping unknown ids."""
    ids = list(dict.fromkeys(run_ids))
    found = AttackRun.objects.in_bulk(ids)
    return [found[pk] for pk in ids if pk in found]


def success_rate(run: AttackRun) -> float | None:
    """Succeeded ÷ requests, in percent."""
    return 100 * run.succeeded / run.requests if run.requests else None


def latest_run_per_strategy() -> list[AttackRun]:
    """The latest finished run of each registered strategy, in the registry's order."""
    finished = AttackRun.objects.filter(status=AttackRun.Status.FINISHED).order_by("-pk")
    runs = [finished.filter(strategy=name).first() for name in registry.names()]
    return [run for run in runs if run is not None]


def timeline_summary(timeline: Timeline) -> dict:
    """The numbers the visualizer's "what happened" box explains."""
    attempts = timeline.attempts
    retried = [a for a in attempts if a.retries]
    waits = [a.lock_wait_us for a in attempts if a.lock_wait_us]
    return {
        "attempts": len(attempts),
        "succeeded": sum(a.outcome == Outcome.SUCCEEDED for a in attempts),
        "lost_groups": len(timeline.lost_updates),
        "overwritten": sum(len(g.overwritten_ids) for g in timeline.lost_updates),
        "overwritten_amount": sum(g.overwritten_amount for g in timeline.lost_updates),
        "largest_group": max((len(g.attempt_ids) for g in timeline.lost_updates), default=0),
        "retried": len(retried),
        "retries": sum(a.retries for a in attempts),
        "conflicted": len(timeline.conflicts),
        "gave_up": sum(a.outcome == Outcome.CONFLICT for a in attempts),
        "waited": len(waits),
        "max_wait_ms": max(waits, default=0) / 1000,
        "instances": len(timeline.instances),
    }
