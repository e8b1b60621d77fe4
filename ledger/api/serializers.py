"""What the API reads and writes. Money is always an integer number of minor units (cents)."""

from __future__ import annotations

import copy

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.validators import UniqueValidator

from ledger.idempotency import client_key
from ledger.models import Account, AttackRun, DeductionAttempt, Outcome

# The same bound as the attack engine's --balance: far below BIGINT, so sums cannot overflow.
MAX_BALANCE = 2**62


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer and nothing else: DRF's IntegerField would accept "12", "1e3" or 12.0."""

    default_error_messages = {
        "strict": "must be a JSON integer number of minor units (cents), not a string, float or boolean",
    }

    def to_internal_value(self, data):
        if type(data) is not int:  # bool is an int subclass: true must not mean one cent
            self.fail("strict")
        return super().to_internal_value(data)


class AccountSerializer(serializers.ModelSerializer):
    class Meta:
        model = Account
        fields = ["id", "name", "balance", "opening_balance", "version", "created_at", "updated_at"]
        read_only_fields = fields


class AccountCreateSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=100,
        validators=[UniqueValidator(Account.objects.all(), message="an account with this name already exists")],
    )
    balance = StrictIntegerField(min_value=0, max_value=MAX_BALANCE, help_text="Opening balance, minor units.")


class BalanceSerializer(serializers.Serializer):
    account_id = serializers.IntegerField()
    balance = serializers.IntegerField(help_text="Minor units.")
    version = serializers.IntegerField(help_text="Grows by one with every balance change.")
    source = serializers.CharField(
        help_text='Where the value came from: "cache", "database" (a miss, or the cache is off) or "fallback" '
        "(Redis unavailable: read from the database)."
    )


class DeductionRequestSerializer(serializers.Serializer):
    amount = StrictIntegerField(min_value=1, help_text="Minor units, at most LEDGER_MAX_AMOUNT.")
    strategy = serializers.CharField(
        required=False, help_text="A name from /api/strategies/; LEDGER_DEFAULT_STRATEGY when omitted."
    )
    think_ms = StrictIntegerField(
        required=False, default=0, min_value=0, help_text="Delay between read and write, at most LEDGER_MAX_THINK_MS."
    )


class FieldsBuiltOnce:
    """A ModelSerializer whose fields are built from the model once per class, then copied.

    DRF builds every field of a ModelSerializer from the model's metadata on each instance: for
    the 25 fields of an attempt that was ~1 ms of CPU per deduction answer on our 2-core machine,
    a fifth of the whole request (profiled, BENCHMARKS.md). The fields depend only on the class,
    so the built set is kept as a prototype and each instance binds its own copies (the
    prototype itself is never bound). Shallow copies: the serializers using this are read-only,
    and reading an attempt never mutates a field's arguments, validators or messages.
    """

    def get_fields(self) -> dict:
        cls = type(self)
        prototype = cls.__dict__.get("_fields_prototype")
        if prototype is None:
            prototype = super().get_fields()
            cls._fields_prototype = prototype
        return {name: copy.copy(field) for name, field in prototype.items()}


class AttemptSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    """A recorded deduction attempt: what happened inside the request, step by step."""

    lock_wait_ms = serializers.SerializerMethodField(help_text="Time spent waiting for a lock, if one was taken.")
    duration_ms = serializers.SerializerMethodField()
    idempotency_key = serializers.SerializerMethodField(help_text="The Idempotency-Key the client sent, if any.")
    timeline = serializers.JSONField(
        source="events", help_text="Every step with its time in µs from the start: lock, reads, retries, write."
    )

    class Meta:
        model = DeductionAttempt
        fields = [
            "id", "account", "strategy", "amount", "think_ms", "outcome", "balance_before", "balance_after",
            "version_before", "version_after", "retries", "lock_wait_ms", "duration_ms", "lock_expired",
            "instance_id", "request_id", "idempotency_key", "attack_run", "started_at", "lock_acquired_at",
            "read_at", "written_at", "finished_at", "error", "timeline",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_lock_wait_ms(self, attempt: DeductionAttempt) -> float | None:
        return None if attempt.lock_wait_us is None else attempt.lock_wait_us / 1000

    def get_duration_ms(self, attempt: DeductionAttempt) -> float:
        return attempt.duration_us / 1000

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_idempotency_key(self, attempt: DeductionAttempt) -> str | None:
        return client_key(attempt.idempotency_key)


class AttemptFilterSerializer(serializers.Serializer):
    account = serializers.IntegerField(required=False, min_value=1, help_text="Account id.")
    strategy = serializers.CharField(required=False)
    outcome = serializers.ChoiceField(choices=Outcome.choices, required=False)
    run = serializers.IntegerField(required=False, min_value=1, help_text="Attack run id.")
    instance = serializers.CharField(required=False, help_text="Instance id that served the attempt.")


class RunSerializer(serializers.ModelSerializer):
    class Meta:
        model = AttackRun
        fields = [
            "id", "strategy", "target", "parameters", "account", "status", "started_at", "finished_at",
            "requests", "succeeded", "insufficient_funds", "conflict", "lock_timeout", "error", "rate_limited",
            "unavailable", "tps", "p50_ms", "p99_ms", "retries", "lock_wait_p99_ms", "initial_balance",
            "expected_balance", "actual_balance", "balance_loss", "reads", "cache_hit_rate", "stale_reads",
            "read_p50_ms", "read_p99_ms", "failure",
        ]  # fmt: skip
        read_only_fields = fields


class StrategySerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    safe_across_processes = serializers.BooleanField()
    default = serializers.BooleanField(help_text="Used when a deduction names no strategy.")


class ErrorSerializer(serializers.Serializer):
    """Every error body (deduction outcomes are attempts, not errors)."""

    error = serializers.CharField(help_text="Machine-readable code, e.g. invalid, not_found, rate_limited.")
    detail = serializers.CharField()
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False, help_text="Bad input, by field."
    )
    valid = serializers.ListField(child=serializers.CharField(), required=False, help_text="Valid strategy names.")
