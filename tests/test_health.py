"""`/health/` for load balancers, and the request identity headers every response carries."""

from __future__ import annotations

import pytest

from ledger import views


@pytest.mark.django_db
def test_health_is_ok_when_database_and_redis_answer(client):
    response = client.get("/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": {"ok": True}, "redis": {"ok": True}}
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_health_names_the_failed_dependency_with_503(client, settings):
    # A real, unreachable Redis server: a closed port on loopback.
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5},
        }
    }
    response = client.get("/health/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"]["ok"] is False and "Connection" in body["checks"]["redis"]["error"]


def test_health_checks_cover_database_and_redis():
    assert set(views.HEALTH_CHECKS) == {"database", "redis"}


@pytest.mark.django_db
def test_responses_carry_request_id_and_instance(client, settings):
    settings.INSTANCE_ID = "app-7"
    response = client.get("/health/", HTTP_X_REQUEST_ID="abc123def456")
    assert response["X-Request-ID"] == "abc123def456"
    assert response["X-Instance"] == "app-7"


@pytest.mark.django_db
@pytest.mark.parametrize("given", ["", "short", "has spaces in it!", "x" * 65])
def test_malformed_request_ids_are_replaced(client, given):
    response = client.get("/health/", HTTP_X_REQUEST_ID=given)
    assert response["X-Request-ID"] != given and len(response["X-Request-ID"]) == 32
