"""Rate limiting: django-ratelimit's counters in Redis, applied as a DRF throttle."""

from __future__ import annotations

import logging

from django.conf import settings
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError
from rest_framework.throttling import BaseThrottle

from ledger.api import counters

logger = logging.getLogger(__name__)


class RateLimitThrottle(BaseThrottle):
    """At most RATE_LIMIT_WRITES unsafe and RATE_LIMIT_READS safe requests per key and window.

    django-ratelimit counts in fixed windows with an atomic `incr` in Redis, so every
    process and instance sharing the Redis server shares the count. As a DRF throttle it
    runs after authentication, so the key can be the user (a decorator on `dispatch` would
    run before it and put every token user in one bucket), and a refusal is DRF's 429 with
    Retry-After rather than django-ratelimit's 403. Refused requests never reach the view,
    so nothing is written for them.
    """

    def allow_request(self, request, view) -> bool:
        group, rate = ("api-reads", settings.RATE_LIMIT_READS) if request.method in ("GET", "HEAD", "OPTIONS") else (
            "api-writes", settings.RATE_LIMIT_WRITES
        )  # fmt: skip
        if not rate:
            return True
        try:
            usage = get_usage(request, group=group, key=settings.RATE_LIMIT_KEY, rate=rate, increment=True)
        except RedisError as failure:
            # django-redis raises instead of returning None, so RATELIMIT_FAIL_OPEN is applied here.
            logger.warning("rate limit not checked (Redis unavailable): %s", failure)
            usage = None if settings.RATELIMIT_FAIL_OPEN else {"should_limit": True, "time_left": 1, "limit": 0}
        if usage is None or not usage["should_limit"]:
            return True
        # A 1 s window reports 0 s left; a client must still wait for the next one.
        self.retry_after = max(1, usage["time_left"])
        counters.rate_limited(group=group, limit=usage["limit"])
        return False

    def wait(self) -> int:
        return self.retry_after
