"""Attacks launched from the admin: one at a time, in a detached `manage.py attack` process.

The web request only validates, takes the launch lock and starts the process, so neither
the request nor a gunicorn worker waits for the attack. The process reports its progress
into Redis (the one store every instance and worker shares), where the admin's pages read
it; it runs the same engine and command as the CLI.

One launch at a time, across every process and instance: a redis-py `Lock` (token + TTL)
taken by the request, handed to the attack process by its token, kept alive by the
process's progress reports and released when it ends. If the process dies without
releasing it, the lock expires after LOCK_TTL_S and the launch is reported as stale.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from redis.exceptions import LockError

from ledger.attack.engine import AttackPlan, ProgressCallback
from ledger.errors import LedgerError
from ledger.models import AttackRun

log = logging.getLogger(__name__)

LOCK_KEY = "attack-launch:lock"
LATEST_KEY = "attack-launch:latest"
STATE_KEY = "attack-launch:{}"
# Long enough to cover the attack process's start-up; refreshed by every progress report.
LOCK_TTL_S = 30
HEARTBEAT_S = 1.0
STATE_TTL_S = 7 * 24 * 3600


class LaunchInProgress(LedgerError):
    def __init__(self, running: dict | None) -> None:
        who = f" by {running['user']}" if running and running.get("user") else ""
        since = f" (launch {running['id'][:8]}{who}, started {running['created_at'][11:19]} UTC)" if running else ""
        super().__init__(f"An attack is already running{since}. Wait for it to finish, then launch again.")
        self.running = running


# The AttackPlan parameters the launch form offers, which are also `attack` options of the same name.
PLAN_OPTIONS = ("requests", "concurrency", "processes", "amount", "balance", "think_ms")


@dataclass(frozen=True)
class LaunchRequest:
    """What the admin's form asks for: `attack` options, `mode` being a strategy or 'all'."""

    mode: str
    requests: int
    concurrency: int
    processes: int
    amount: int
    balance: int
    think_ms: int
    url: str = ""

    def command_args(self, launch_id: str) -> list[str]:
        args = ["attack", "--mode", self.mode, "--launch-id", launch_id, "--json"]
        for option in PLAN_OPTIONS:
            args += [f"--{option.replace('_', '-')}", str(getattr(self, option))]
        if self.url:
            args += ["--url", self.url]
        return args


def _lock():
    return cache.lock(LOCK_KEY, timeout=LOCK_TTL_S)


def get_state(launch_id: str) -> dict | None:
    return cache.get(STATE_KEY.format(launch_id))


def _save_state(state: dict) -> None:
    cache.set(STATE_KEY.format(state["id"]), state, timeout=STATE_TTL_S)


def is_locked() -> bool:
    return _lock().locked()


def _lock_holder() -> str | None:
    """The launch id (the lock's token) holding the launch lock, if any."""
    lock = _lock()
    token = lock.redis.get(lock.name)
    return None if token is None else token.decode()


def state_of(launch_id: str) -> dict | None:
    """A launch's state as last reported, marked stale if it stopped reporting while running."""
    state = get_state(launch_id)
    if state and state["status"] in ("starting", "running") and _lock_holder() != launch_id:
        state = {**state, "status": "stale", "error": "the attack process stopped reporting (was it killed?)"}
    return state


def latest() -> dict | None:
    """The most recent launch's state."""
    launch_id = cache.get(LATEST_KEY)
    return state_of(launch_id) if launch_id else None


def current() -> dict | None:
    """The launch in progress, if any."""
    state = latest()
    return state if state and state["status"] in ("starting", "running") else None


def launch(request: LaunchRequest, *, strategies: list[str], user: str = "") -> dict:
    """Take the launch lock and start the attack process; raise LaunchInProgress if taken."""
    launch_id = uuid.uuid4().hex
    lock = _lock()
    if not lock.acquire(blocking=False, token=launch_id):
        raise LaunchInProgress(current())
    state = {
        "id": launch_id,
        "status": "starting",
        "user": user,
        "created_at": timezone.now().isoformat(),
        "finished_at": None,
        "request": asdict(request),
        "runs": [{"strategy": name, "done": 0, "total": request.requests, "run_id": None} for name in strategies],
        "error": "",
    }
    _save_state(state)
    cache.set(LATEST_KEY, launch_id, timeout=STATE_TTL_S)
    try:
        process = _spawn(request, launch_id)
    except BaseException as failure:
        _finish(state, error=f"could not start the attack process: {failure}")
        lock.release()
        raise
    reaper = threading.Thread(target=_reap, args=(process, launch_id), name=f"launch-{launch_id[:8]}", daemon=True)
    _reapers[launch_id] = reaper
    reaper.start()
    return state


def log_path(launch_id: str) -> Path:
    return settings.VAR_DIR / "launches" / f"{launch_id}.log"


def _spawn(request: LaunchRequest, launch_id: str) -> subprocess.Popen:
    path = log_path(launch_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # The process writes where this one reads: the same database (under pytest, the test
        # database, whose name only exists at run time) and the same Redis database.
        "ATTACK_DATABASE_NAME": str(connection.settings_dict["NAME"]),
        "REDIS_URL": settings.REDIS_URL,
    }
    with open(path, "wb") as output:
        return subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), *request.command_args(launch_id)],
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Its own session: a signal to the web worker's process group does not stop it.
            start_new_session=True,
        )


# Reaper threads of the launches started by this process, for wait().
_reapers: dict[str, threading.Thread] = {}


def _reap(process: subprocess.Popen, launch_id: str) -> None:
    """Wait for the process (no zombie) and report a death it could not report itself."""
    code = process.wait()
    state = get_state(launch_id)
    if code != 0 and state and state["status"] in ("starting", "running"):
        tail = log_path(launch_id).read_text(errors="replace").strip().splitlines()[-1:] or [""]
        _finish(state, error=f"the attack process exited with status {code}: {tail[0]}")
        _release(launch_id)


def wait(launch_id: str, timeout: float) -> dict | None:
    """Wait until a launch started by this process has ended; its final state (tests, scripts)."""
    reaper = _reapers[launch_id]
    reaper.join(timeout)
    if reaper.is_alive():
        raise TimeoutError(f"launch {launch_id} still running after {timeout} s")
    del _reapers[launch_id]
    return get_state(launch_id)


def _finish(state: dict, *, error: str = "") -> None:
    state.update(status="failed" if error else "finished", error=error, finished_at=timezone.now().isoformat())
    _save_state(state)


def _release(launch_id: str) -> None:
    lock = _lock()
    # The attack process holds the lock under the launch's token (taken by the web request).
    lock.local.token = lock.redis.get_encoder().encode(launch_id)
    with contextlib.suppress(LockError):  # expired already: nothing to release
        lock.release()


class NullReporter:
    """What `attack` reports to when no admin launch is watching."""

    def __enter__(self) -> NullReporter:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def started(self, plan: AttackPlan) -> None:
        pass

    def wrap(self, on_progress: ProgressCallback) -> ProgressCallback:
        return on_progress

    def finished(self, run: AttackRun) -> None:
        pass


class Reporter(NullReporter):
    """Used by `attack --launch-id`: writes progress into the launch's state in Redis."""

    def __init__(self, launch_id: str) -> None:
        state = get_state(launch_id)
        if state is None:
            raise LedgerError(f"launch {launch_id} does not exist (expired?)")
        self.state = state
        self.index = -1
        self.lock = _lock()
        # Hold the lock the web request took, under its token (the launch id).
        self.lock.local.token = self.lock.redis.get_encoder().encode(launch_id)
        self.beat_at = 0.0

    def __enter__(self) -> Reporter:
        self.state["status"] = "running"
        self._heartbeat(force=True)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        _finish(self.state, error="" if exc is None else f"{type(exc).__name__}: {exc}")
        _release(self.state["id"])

    def _heartbeat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.beat_at >= HEARTBEAT_S:
            self.beat_at = now
            try:
                self.lock.reacquire()
            except LockError:
                log.warning("launch %s: the launch lock expired while running", self.state["id"])
            _save_state(self.state)

    def started(self, plan: AttackPlan) -> None:
        self.index += 1
        self.state["runs"][self.index].update(strategy=plan.strategy, total=plan.requests)
        self._heartbeat(force=True)

    def wrap(self, on_progress: ProgressCallback) -> ProgressCallback:
        def report(done: int, total: int) -> None:
            on_progress(done, total)
            self.state["runs"][self.index].update(done=done, total=total)
            self._heartbeat()

        return report

    def finished(self, run: AttackRun) -> None:
        self.state["runs"][self.index].update(run_id=run.pk, done=run.requests)
        self._heartbeat(force=True)


def reporter(launch_id: str | None) -> NullReporter:
    return Reporter(launch_id) if launch_id else NullReporter()
