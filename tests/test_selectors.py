"""Reads behind the visualizer: lost updates, conflict causes, the version chain."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from ledger import selectors
from ledger.models import DeductionAttempt, Outcome

T0 = timezone.now()


def attempt(pk: int, *, outcome=Outcome.SUCCEEDED, read: int | None = 0, wrote_at_ms: int = 10, amount: int = 100,
            events: list | None = None, account_id: int = 1, **fields) -> DeductionAttempt:  # fmt: skip
    """An attempt that read `version read` and (if it succeeded) wrote read + 1 at `wrote_at_ms`."""
    succeeded = outcome == Outcome.SUCCEEDED
    return DeductionAttempt(
        pk=pk, account_id=account_id, strategy="crafted", amount=amount, outcome=outcome,
        version_before=read, version_after=read + 1 if succeeded and read is not None else None,
        started_at=T0, written_at=T0 + timedelta(milliseconds=wrote_at_ms) if succeeded else None,
        finished_at=T0 + timedelta(milliseconds=wrote_at_ms + 1), events=events or [], instance_id="i",
        request_id=f"r{pk}", **fields,
    )  # fmt: skip


def test_succeeded_attempts_that_read_the_same_version_form_one_lost_update_group():
    crafted = [
        attempt(1, read=0, wrote_at_ms=12),
        attempt(2, read=0, wrote_at_ms=10),
        attempt(3, read=0, wrote_at_ms=11, amount=30),
        attempt(4, read=1, wrote_at_ms=20),  # read what one of them wrote: alone on version 1
        attempt(5, read=1, outcome=Outcome.INSUFFICIENT_FUNDS),  # refused: wrote nothing
        attempt(6, read=0, account_id=2),  # another account's version 0
    ]
    [group] = selectors.lost_update_groups(crafted)
    assert (group.account_id, group.version_read) == (1, 0)
    assert group.attempt_ids == (2, 3, 1)  # in the order they wrote
    assert group.survivor_id == 1 and group.overwritten_ids == (2, 3)
    assert group.overwritten_amount == 130


def test_a_correct_history_has_no_lost_update():
    history = [attempt(pk, read=pk - 1, wrote_at_ms=pk) for pk in range(1, 6)]
    assert selectors.lost_update_groups(history) == []


def test_a_conflict_points_at_the_attempt_that_wrote_the_missed_version():
    writer = attempt(1, read=3, wrote_at_ms=5)
    loser = attempt(
        2, read=4, wrote_at_ms=9, retries=1,
        events=[{"t_us": 1, "event": "read", "version": 3}, {"t_us": 6000, "event": "conflict", "version": 3},
                {"t_us": 6001, "event": "retry"}, {"t_us": 7000, "event": "read", "version": 4}],
    )  # fmt: skip
    unknown = attempt(3, outcome=Outcome.CONFLICT, read=7, events=[{"t_us": 1, "event": "conflict", "version": 7}])
    causes = selectors.conflict_causes([writer, loser, unknown])
    assert causes == {2: [{"version": 3, "by": 1}], 3: [{"version": 7, "by": None}]}


def test_the_version_chain_marks_versions_written_twice():
    timeline = selectors.Timeline(
        attempts=[attempt(1, read=0), attempt(2, read=0), attempt(3, read=1)],
        truncated=False, lost_updates=[], conflicts={},
    )  # fmt: skip
    assert timeline.version_chain() == [
        {"version": 1, "writers": [1, 2], "forked": True},
        {"version": 2, "writers": [3], "forked": False},
    ]


@pytest.mark.django_db
def test_the_run_timeline_marks_the_lost_updates_of_recorded_attempts(recorded_run):
    rows = list(DeductionAttempt.objects.filter(attack_run=recorded_run, outcome=Outcome.SUCCEEDED).order_by("pk"))
    # Rewrite history as no-lock would have made it: the first two read the same version.
    DeductionAttempt.objects.filter(pk=rows[1].pk).update(version_before=rows[0].version_before)
    drawing = selectors.run_timeline(run_id=recorded_run.pk).as_json()
    marked = {a["id"]: a["lost_group"] for a in drawing["attempts"]}
    assert marked[rows[0].pk] == marked[rows[1].pk] == 0
    assert marked[rows[2].pk] is None
    assert drawing["lost_updates"][0]["attempts"] == [rows[0].pk, rows[1].pk]
    assert all(a["start"] >= 0 and a["end"] >= a["start"] for a in drawing["attempts"])
