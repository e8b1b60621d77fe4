"""API fixtures: token-authenticated clients and a clean Redis (rate-limit windows, breaker)."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from ledger.api.breaker import database_breaker
from ledger.api.tokens import ensure_token


@pytest.fixture(autouse=True)
def clean_redis():
    """Rate-limit counters and the breaker's state live in Redis and would leak between tests."""
    cache.clear()
    database_breaker.cache_clear()
    yield
    database_breaker.cache_clear()


def token_client(username: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ensure_token(username=username)}")
    return client


@pytest.fixture
def api(db) -> APIClient:
    """A client authenticated with the token of user 'alice'."""
    return token_client("alice")


@pytest.fixture
def other_api(db) -> APIClient:
    """A client authenticated as another user, 'bob'."""
    return token_client("bob")


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()
