"""bench/'s HTTP ceiling, GET /bench/hello/: off unless BENCH_HELLO_VIEW enables it."""

from __future__ import annotations

import pytest
from django.conf import settings


def test_hello_view_is_off_by_default():
    assert settings.BENCH_HELLO_VIEW is False


def test_hello_view_is_not_found_unless_enabled(client, settings):
    settings.BENCH_HELLO_VIEW = False
    assert client.get("/bench/hello/").status_code == 404


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_hello_view_only_answers_get(client, settings, method):
    settings.BENCH_HELLO_VIEW = True
    assert getattr(client, method)("/bench/hello/").status_code == 405


def test_enabled_hello_view_answers_json_without_the_database_or_redis(client, settings):
    # No django_db mark: any database access would fail this test; and Redis points nowhere.
    settings.BENCH_HELLO_VIEW = True
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    response = client.get("/bench/hello/")
    assert response.status_code == 200
    assert response.json()["hello"] == "world"
    assert response["X-Instance"] == response.json()["instance"]  # the same middleware as the API
