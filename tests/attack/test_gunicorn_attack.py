"""`attack --url` against a real gunicorn with two worker processes (the deployment's shape)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from strategies import registry
from tests.support import mysql_only

CORRECT = [s.name for s in registry.all_strategies() if s.safe_across_processes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def gunicorn():
    """gunicorn (gthread, 2 workers) on the test database and the test Redis db."""
    db = connection.settings_dict
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"mysql://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/"
        f"{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "ALLOWED_HOSTS": "127.0.0.1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "project.wsgi", "-k", "gthread", "-w", "2", "--threads", "4",
         "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=settings.BASE_DIR,
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # polling a starting server: there is nothing to wait on
            try:
                with urllib.request.urlopen(f"{url}/health/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@mysql_only("gunicorn's worker processes share the test database through the server")
@pytest.mark.django_db(transaction=True)
def test_attack_through_gunicorn_loses_nothing_with_the_correct_strategies(gunicorn):
    out = StringIO()
    call_command("attack", "--url", gunicorn, "--mode", "all", "--requests", "120", "--concurrency", "8",
                 "--balance", "9000", "--json", stdout=out)  # fmt: skip
    runs = {run["strategy"]: run for run in json.loads(out.getvalue())["runs"]}
    assert list(runs) == registry.names()
    for name in CORRECT:
        assert runs[name]["balance_loss"] == 0, name
        assert runs[name]["requests"] == 120 and runs[name]["error"] == 0
