"""Plain Django views (not the API)."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_redis import get_redis_connection

from ledger.services import current_instance_id


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    get_redis_connection("default").ping()


HEALTH_CHECKS = {"database": _check_database, "redis": _check_redis}


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """For load balancers: 200 when the database and Redis answer, 503 naming what failed."""
    checks = {}
    for name, check in HEALTH_CHECKS.items():
        try:
            check()
            checks[name] = {"ok": True}
        except Exception as failure:  # noqa: BLE001 - any failure means "not healthy", reported by name
            checks[name] = {"ok": False, "error": f"{type(failure).__name__}: {failure}"}
    healthy = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "instance": current_instance_id(), "checks": checks},
        status=200 if healthy else 503,
    )
