"""The hot-path attempt INSERT stores exactly what Model.save() would."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.forms.models import model_to_dict
from django.utils import timezone

from ledger.models import DeductionAttempt, Outcome
from ledger.recording import insert_attempt


@pytest.mark.django_db
def test_insert_attempt_round_trips_every_field_like_save(make_account):
    account = make_account()
    started = timezone.now()

    def attempt(request_id: str) -> DeductionAttempt:
        return DeductionAttempt(
            account_id=account.pk,
            strategy="optimistic",
            amount=125,
            think_ms=3,
            outcome=Outcome.CONFLICT,
            balance_before=10_000,
            balance_after=None,
            version_before=7,
            version_after=None,
            retries=3,
            lock_wait_us=None,
            duration_us=4_321,
            started_at=started,
            lock_acquired_at=None,
            read_at=started + timedelta(microseconds=17),
            written_at=None,
            finished_at=started + timedelta(microseconds=4_321),
            events=[{"t_us": 17, "event": "read", "balance": 10_000, "version": 7}],
            lock_expired=True,
            instance_id="app-1",
            request_id=request_id,
            idempotency_key=f"key-ü-{request_id}",
            attack_run_id=None,
            error="version changed under every one of 4 tries",
        )

    fast, orm = attempt("fast-path-0001"), attempt("orm-save-0001")
    insert_attempt(fast)
    orm.save(force_insert=True)
    assert fast.pk and not fast._state.adding

    stored_fast = model_to_dict(DeductionAttempt.objects.get(pk=fast.pk))
    stored_orm = model_to_dict(DeductionAttempt.objects.get(pk=orm.pk))
    for stored in (stored_fast, stored_orm):
        stored.pop("id"), stored.pop("request_id"), stored.pop("idempotency_key")
    assert stored_fast == stored_orm
    assert stored_fast["read_at"] == started + timedelta(microseconds=17)  # microseconds kept
    assert DeductionAttempt.objects.get(pk=fast.pk).idempotency_key == "key-ü-fast-path-0001"
