"""API fixtures: token-authenticated clients and a clean Redis (rate-limit windows, breaker)."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model
from django_ratelimit.core import _get_window, _split_rate
from rest_framework.test import APIClient

from ledger.api.tokens import ensure_token


def token_client(username: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ensure_token(username=username)}")
    return client


def user_with_a_long_window(rate: str, margin_s: int = 60) -> str:
    """A user whose fixed window (django-ratelimit staggers them per key) will not roll over
    while the test runs: the counts the test asserts then all belong to one window."""
    _, period = _split_rate(rate)
    for n in range(100):
        username = f"limited-{n}"
        ensure_token(username=username)
        user_id = get_user_model().objects.get(username=username).pk
        if _get_window(str(user_id), period) - time.time() >= margin_s:
            return username
    raise AssertionError("no user with enough time left in its window")


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
