"""The ledger's records. Money is always an integer number of minor units (cents)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Account(models.Model):
    """A balance that deductions draw from.

    `version` grows by exactly one with every balance change (deduction, top-up, reset),
    which is what optimistic compare-and-swap and the visualizer's version chain rely on.
    """

    name = models.CharField(max_length=100, unique=True)
    balance = models.BigIntegerField(help_text="Minor units (cents).")
    opening_balance = models.BigIntegerField(help_text="Balance at creation, minor units.")
    version = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # The database itself refuses an overdraft, whatever a strategy gets wrong.
            models.CheckConstraint(condition=Q(balance__gte=0), name="account_balance_non_negative"),
            models.CheckConstraint(condition=Q(opening_balance__gte=0), name="account_opening_balance_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.balance})"


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    INSUFFICIENT_FUNDS = "insufficient_funds", "Insufficient funds"
    CONFLICT = "conflict", "Conflict (optimistic retries exhausted)"
    LOCK_TIMEOUT = "lock_timeout", "Lock timeout"
    ERROR = "error", "Error"


class AttackRun(models.Model):
    """One `attack` of one strategy: its parameters and what it measured."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"

    IN_PROCESS = "in-process"

    strategy = models.CharField(max_length=32, db_index=True)
    target = models.CharField(max_length=300, default=IN_PROCESS, help_text="in-process, or the URL attacked.")
    parameters = models.JSONField(default=dict)
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.SET_NULL, related_name="attack_runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    requests = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    insufficient_funds = models.PositiveIntegerField(default=0)
    conflict = models.PositiveIntegerField(default=0)
    lock_timeout = models.PositiveIntegerField(default=0)
    error = models.PositiveIntegerField(default=0)
    rate_limited = models.PositiveIntegerField(default=0, help_text="HTTP 429 answers (attacks over HTTP).")
    unavailable = models.PositiveIntegerField(default=0, help_text="HTTP 503 answers (attacks over HTTP).")
    tps = models.FloatField(null=True, blank=True)
    p50_ms = models.FloatField(null=True, blank=True)
    p99_ms = models.FloatField(null=True, blank=True)
    retries = models.PositiveIntegerField(default=0)
    lock_wait_p99_ms = models.FloatField(null=True, blank=True)
    initial_balance = models.BigIntegerField(null=True, blank=True)
    expected_balance = models.BigIntegerField(null=True, blank=True)
    actual_balance = models.BigIntegerField(null=True, blank=True)
    balance_loss = models.BigIntegerField(null=True, blank=True, help_text="expected − actual, minor units.")
    # Balance reads mixed into the run (attack --read-ratio): `requests` counts them, the outcome
    # counts and p50/p99 above are deductions only.
    reads = models.PositiveIntegerField(default=0, help_text="Balance reads among the requests.")
    cache_hit_rate = models.FloatField(null=True, blank=True, help_text="Share of reads answered by the cache.")
    stale_reads = models.PositiveIntegerField(
        default=0, help_text="Reads older than a version the same client had already seen committed."
    )
    read_p50_ms = models.FloatField(null=True, blank=True)
    read_p99_ms = models.FloatField(null=True, blank=True)
    failure = models.TextField(blank=True, help_text="Why the run itself failed, if it did.")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"run {self.pk} · {self.strategy}"


class DeductionAttempt(models.Model):
    """One deduction that reached the ledger, whatever its outcome. Never changed afterwards."""

    # No database-level foreign key: InnoDB checks one by taking a shared lock on the account
    # row, so recording a refused attempt (lock timeout, conflict, insufficient funds) would
    # queue on the very row lock it was refused for. Accounts are never deleted (PROTECT).
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="deduction_attempts", db_constraint=False
    )
    strategy = models.CharField(max_length=32)
    amount = models.BigIntegerField(help_text="Minor units (cents).")
    think_ms = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    balance_before = models.BigIntegerField(null=True, blank=True)
    balance_after = models.BigIntegerField(null=True, blank=True)
    version_before = models.PositiveBigIntegerField(null=True, blank=True)
    version_after = models.PositiveBigIntegerField(null=True, blank=True)
    retries = models.PositiveIntegerField(default=0)
    lock_wait_us = models.PositiveBigIntegerField(null=True, blank=True, help_text="Time spent waiting for a lock.")
    duration_us = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField()
    lock_acquired_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True, help_text="Last read of the balance before the write.")
    written_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField()
    events = models.JSONField(default=list, blank=True, help_text="Every step with its time: reads, conflicts, lock.")
    lock_expired = models.BooleanField(
        default=False, help_text="The distributed lock's TTL ran out before it was released."
    )
    instance_id = models.CharField(max_length=128)
    request_id = models.CharField(max_length=64, unique=True)
    # NULL, not "": many attempts have no key, and a key must stay unique where given.
    # UNIQUE is what makes an idempotent deduction happen once (see ledger/idempotency.py):
    # the success record commits with the balance change, so a duplicate rolls both back.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    attack_run = models.ForeignKey(
        AttackRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="deduction_attempts",
        db_constraint=False,
    )  # fmt: skip
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["account", "outcome"], name="attempt_account_outcome"),
            models.Index(fields=["attack_run", "outcome"], name="attempt_run_outcome"),
            models.Index(fields=["strategy", "outcome"], name="attempt_strategy_outcome"),
            models.Index(fields=["started_at"], name="attempt_started_at"),
            # For the admin and the visualizer on millions of rows: an account's timeline and
            # last activity, and the strategy / outcome / instance filters (each index also orders
            # by id, the changelist's order).
            models.Index(fields=["account", "started_at"], name="attempt_account_started"),
            models.Index(fields=["strategy"], name="attempt_strategy"),
            models.Index(fields=["outcome"], name="attempt_outcome"),
            models.Index(fields=["instance_id"], name="attempt_instance"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.pk} · {self.strategy} · {self.outcome}"


class BalanceAdjustment(models.Model):
    """A balance change that is not a deduction (top-up, reset), recorded so audits stay exact."""

    class Kind(models.TextChoices):
        TOP_UP = "top_up", "Top-up"
        RESET = "reset", "Reset"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="balance_adjustments")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    delta = models.BigIntegerField(help_text="Signed change, minor units.")
    balance_before = models.BigIntegerField()
    balance_after = models.BigIntegerField()
    version_before = models.PositiveBigIntegerField()
    version_after = models.PositiveBigIntegerField()
    note = models.CharField(max_length=300, blank=True)
    instance_id = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.delta:+d} on {self.account_id}"
