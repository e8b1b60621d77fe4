"""API views: parse, call a service or selector, render. Statuses come from ledger.api.exceptions."""

from __future__ import annotations

from django.conf import settings
from django.db import DatabaseError
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from ledger import selectors, services
from ledger.api.breaker import database_breaker, is_outage
from ledger.api.exceptions import OUTCOME_STATUS
from ledger.api.serializers import (
    AccountCreateSerializer,
    AccountSerializer,
    AttemptFilterSerializer,
    AttemptSerializer,
    BalanceSerializer,
    DeductionRequestSerializer,
    ErrorSerializer,
    RunSerializer,
    StrategySerializer,
)
from ledger.idempotency import deduct_once, scoped_key
from ledger.models import Account, AttackRun, DeductionAttempt
from strategies import registry

ERRORS = dict.fromkeys((400, 401, 404, 429), ErrorSerializer)


@extend_schema_view(
    list=extend_schema(summary="Accounts, newest first", responses={200: AccountSerializer, **ERRORS}),
    retrieve=extend_schema(summary="One account", responses={200: AccountSerializer, **ERRORS}),
)
class AccountViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Account.objects.all()
    serializer_class = AccountSerializer
    lookup_value_regex = r"\d+"

    @extend_schema(
        summary="Open an account",
        request=AccountCreateSerializer,
        responses={201: AccountSerializer, **ERRORS},
    )
    def create(self, request, *args, **kwargs) -> Response:
        body = AccountCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        account = services.open_account(**body.validated_data)
        return Response(
            AccountSerializer(account).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": reverse("api:account-detail", args=[account.pk])},
        )

    @extend_schema(
        summary="The balance (the cheap read path)",
        responses={200: BalanceSerializer, **ERRORS},
    )
    @action(detail=True, methods=["get"])
    def balance(self, request, pk: str) -> Response:
        return Response(BalanceSerializer(selectors.balance(account_id=int(pk))).data)


DEDUCTION_RESPONSES = {
    201: OpenApiResponse(AttemptSerializer, description="succeeded: the recorded attempt"),
    402: OpenApiResponse(AttemptSerializer, description="insufficient_funds: recorded, nothing deducted"),
    409: OpenApiResponse(
        AttemptSerializer,
        description="conflict: optimistic retries exhausted (recorded, nothing deducted); "
        'or {"error": "request_id_reused"} when X-Request-ID already names an attempt',
    ),
    423: OpenApiResponse(AttemptSerializer, description="lock_timeout: the lock was not acquired in time (recorded)"),
    500: OpenApiResponse(AttemptSerializer, description="error: the strategy failed unexpectedly (recorded)"),
    400: OpenApiResponse(ErrorSerializer, description="invalid input, with field-level messages"),
    401: OpenApiResponse(ErrorSerializer, description="no or bad token"),
    404: OpenApiResponse(ErrorSerializer, description="no such account"),
    415: OpenApiResponse(ErrorSerializer, description="not application/json"),
    422: OpenApiResponse(ErrorSerializer, description="Idempotency-Key already used for a different deduction"),
    429: OpenApiResponse(ErrorSerializer, description="rate limited; see Retry-After"),
    503: OpenApiResponse(ErrorSerializer, description="database unavailable or circuit breaker open; see Retry-After"),
}


class DeductionView(APIView):
    """Deduct from an account with a strategy; the recorded attempt is the answer.

    The request's database work, authentication included, runs under the circuit breaker:
    while it is open the request is refused before the token is even looked up.
    """

    def initial(self, request, *args, **kwargs) -> None:
        database_breaker().refuse_if_open()
        try:
            super().initial(request, *args, **kwargs)
        except DatabaseError as failure:
            if is_outage(failure):
                database_breaker().record_failure(failure)
            raise

    @extend_schema(
        summary="Deduct",
        request=DeductionRequestSerializer,
        responses=DEDUCTION_RESPONSES,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Same key and body: the original answer, never a second deduction "
                "(also across instances). Same key, different body: 422. Scoped per user; 1-200 visible ASCII.",
            ),
            OpenApiParameter(
                "X-Request-ID",
                str,
                OpenApiParameter.HEADER,
                description="Recorded as the attempt's request_id (8-64 of [A-Za-z0-9._-]); must be new per deduction.",
            ),
        ],
    )
    def post(self, request, account_id: int) -> Response:
        body = DeductionRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key")
        scoped = None if key is None else scoped_key(owner=f"user-{request.user.pk}", key=key)
        with database_breaker().guard():
            attempt, replayed = deduct_once(
                account_id=account_id, **body.validated_data, request_id=request.request_id, idempotency_key=scoped
            )
        headers = {"Location": reverse("api:attempt-detail", args=[attempt.pk])}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(AttemptSerializer(attempt).data, status=OUTCOME_STATUS[attempt.outcome], headers=headers)


@extend_schema_view(
    list=extend_schema(
        summary="Deduction attempts, newest first",
        parameters=[AttemptFilterSerializer],
        responses={200: AttemptSerializer, **ERRORS},
    ),
    retrieve=extend_schema(summary="One attempt with its timeline", responses={200: AttemptSerializer, **ERRORS}),
)
class AttemptViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = AttemptSerializer
    lookup_value_regex = r"\d+"

    def get_queryset(self):
        attempts = DeductionAttempt.objects.all()
        if self.action != "list":
            return attempts
        filters = AttemptFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        wanted = filters.validated_data
        if "strategy" in wanted:
            wanted["strategy"] = registry.get(wanted["strategy"]).name
        lookups = {
            "account": "account_id", "strategy": "strategy", "outcome": "outcome", "run": "attack_run_id",
            "instance": "instance_id",
        }  # fmt: skip
        return attempts.filter(**{lookups[name]: value for name, value in wanted.items()})


@extend_schema_view(
    list=extend_schema(summary="Attack runs, newest first", responses={200: RunSerializer, **ERRORS}),
    retrieve=extend_schema(summary="One attack run", responses={200: RunSerializer, **ERRORS}),
)
class RunViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = AttackRun.objects.all()
    serializer_class = RunSerializer
    lookup_value_regex = r"\d+"


class StrategyListView(APIView):
    @extend_schema(summary="The registered strategies", responses={200: StrategySerializer(many=True), **ERRORS})
    def get(self, request) -> Response:
        default = registry.get(settings.LEDGER_DEFAULT_STRATEGY).name
        strategies = [
            {
                "name": strategy.name,
                "description": strategy.description(),
                "safe_across_processes": strategy.safe_across_processes,
                "default": strategy.name == default,
            }
            for strategy in registry.all_strategies()
        ]
        return Response(StrategySerializer(strategies, many=True).data)
