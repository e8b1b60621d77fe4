"""gunicorn settings shared by every deployment: the Docker image, docker-compose.yml and `manage.py cluster`.

Every value comes from the environment, with defaults sized for this app: requests spend their
time waiting on the database and on locks, not on the CPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")

# gthread: while one thread waits for a row lock or the Redis lock, the others keep serving, and
# (unlike sync workers) connections stay open so nginx's upstream keep-alive works.
worker_class = "gthread"
workers = _env_int("GUNICORN_WORKERS", 2)
threads = _env_int("GUNICORN_THREADS", 4)
# Every thread holds its own database connection: instances × workers × threads must stay below
# the server's max_connections (`manage.py cluster up` checks it, tests/deploy check compose).

# Longer than the worst request: a row lock wait (DB_LOCK_TIMEOUT_S, 10 s) after a lock wait
# (LEDGER_LOCK_WAIT_S, 5 s) plus think time (LEDGER_MAX_THINK_MS, 1 s). Killing a worker mid-request
# would leave the caller without the answer to a deduction that may have happened.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, in-flight requests get this long to finish; compose's stop_grace_period is longer.
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 25)
# Longer than nginx's upstream keepalive_timeout (60 s): nginx closes an idle connection first and so
# never sends a request down one gunicorn is closing (a POST that fails that way is not retried).
keepalive = _env_int("GUNICORN_KEEPALIVE", 75)

# Only the proxy may tell gunicorn the original scheme (X-Forwarded-Proto).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = os.environ.get("GUNICORN_ERRORLOG", "-")
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# The request id and instance are the ones the app answered with (RequestIdentityMiddleware): nginx's id
# when it sent a well-formed one, so one grep finds a request in nginx's log and in the app's.
access_log_format = (
    '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s instance=%({x-instance}o)s'
    ' forwarded_for="%({x-forwarded-for}i)s"'
)

# The heartbeat file is touched constantly: keep it in memory (/dev/shm in the image).
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR") or None

# gunicorn's control socket defaults to one path per user: a second instance on the same host would
# take it over. Off unless an instance names its own.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def on_starting(server) -> None:
    """Start every run with an empty prometheus_client multiprocess directory.

    PROMETHEUS_MULTIPROC_DIR must be in the environment before gunicorn starts (docker-compose.yml,
    `manage.py cluster`): prometheus_client reads it at import. Files left by a previous run would
    be added to this run's counters.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    # Empty it rather than recreate it: in a container it is a tmpfs mount point.
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def child_exit(server, worker) -> None:
    """Let the live gauges of a dead worker go (prometheus_client multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
