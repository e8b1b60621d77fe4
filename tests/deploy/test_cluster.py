"""`manage.py cluster`: real gunicorn instances behind a real nginx on 127.0.0.1, started and stopped
as a user would (the command in a process of its own), on the configured database and Redis."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy import cluster
from tests.deploy.conftest import manage, recorded, scrape, up
from tests.support import mysql_only


def get(url: str, **headers: str):
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)


def logged(path: Path, text: str, timeout_s: float = 10) -> bool:
    """Whether `text` shows up in a log another process writes (after it answered: poll for it)."""
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_two_instances_answer_behind_nginx_and_down_leaves_no_process(cluster_env):
    started = manage(
        cluster_env, "cluster", "up", "--instances", "2", "--port", "0", "--workers", "1", "--threads", "2"
    )
    record = recorded(cluster_env)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert [member.name for member in record.members] == ["app-1", "app-2", "nginx"]
        assert all(cluster.is_running(member) for member in record.members)

        status = manage(cluster_env, "cluster", "status", "--json")
        report = json.loads(status.stdout)
        assert status.returncode == 0 and report["ok"] is True
        base = report["url"]
        assert base == record.proxy.url

        instances = {get(f"{base}/health/").headers["X-Instance"] for _ in range(12)}
        assert instances == {"app-1", "app-2"}

        with get(f"{base}/health/", **{"X-Request-ID": "trace-me-0001"}) as response:
            answered_by = response.headers["X-Instance"]
            assert response.headers["X-Request-ID"] == "trace-me-0001"
        line = f"request_id=trace-me-0001 instance={answered_by}"
        assert logged(record.run_dir / f"{answered_by}.log", line)
        assert logged(record.run_dir / "nginx-access.log", line)

        with get(f"{base}/static/admin/css/base.css") as response:
            assert response.status == 200 and "X-Instance" not in response.headers  # nginx, not an app

        # Metrics: each instance answers its own, from a multiprocess directory of its own; nginx never.
        for member in record.members[:2]:
            scraped = scrape(member.url)
            assert "ledger_deductions_total" in scraped and "django_http_requests_total_by_method_total" in scraped
            assert list((record.run_dir / member.name / "prometheus").glob("counter_*.db"))
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(f"{base}/metrics")
        assert refused.value.code == 404

        again = up(cluster_env)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        stopped = manage(cluster_env, "cluster", "down")
    assert stopped.returncode == 0, stopped.stderr
    assert "none of their processes is left" in stopped.stdout
    assert [member for member in record.members if cluster.group_members(member)] == []
    assert recorded(cluster_env) is None
    assert manage(cluster_env, "cluster", "status").returncode == 1


def test_an_instance_that_cannot_start_fails_up_and_nothing_is_left(cluster_env):
    cluster_env["GUNICORN_CMD_ARGS"] = "--no-such-option"  # read by gunicorn only, not by `cluster up`
    started = manage(
        cluster_env, "cluster", "up", "--instances", "2", "--port", "0", "--workers", "1", "--threads", "1"
    )
    assert started.returncode == 1
    assert "app-1 exited" in started.stderr and "no-such-option" in started.stderr
    assert recorded(cluster_env) is None
    assert "no cluster is running" in manage(cluster_env, "cluster", "down").stdout


def test_a_busy_port_is_refused_before_anything_starts(cluster_env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = up(cluster_env, "--port", str(port))
    assert started.returncode == 1
    assert started.stderr.strip().splitlines()[-1].startswith(f"CommandError: port {port} on 127.0.0.1 is not free")
    assert recorded(cluster_env) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--instances", "0"], "--instances: must be from 1 to 16"),
        (["--port", "80"], "--port: must be 0 (any free ports) or from 1024 to"),
        (["--threads", "0"], "--threads: must be from 1 to 64"),
    ],
)
def test_bad_options_are_refused_with_one_line(cluster_env, args, message):
    started = up(cluster_env, *args)
    assert started.returncode == 1
    assert started.stderr.strip().startswith(f"CommandError: {message}")


@mysql_only("max_connections")
def test_a_cluster_the_database_cannot_serve_is_refused(cluster_env):
    started = manage(
        cluster_env, "cluster", "up", "--instances", "16", "--workers", "8", "--threads", "8", "--port", "0"
    )
    assert started.returncode == 1
    assert "exceeds the server's max_connections" in started.stderr
    assert recorded(cluster_env) is None


def test_config_prints_the_nginx_conf_up_would_run_checked_by_nginx(cluster_env):
    result = manage(cluster_env, "cluster", "config", "--instances", "3", "--port", "18400")
    assert result.returncode == 0, result.stderr
    assert "listen 127.0.0.1:18400;" in result.stdout
    assert [f"server 127.0.0.1:{port}" in result.stdout for port in (18401, 18402, 18403)] == [True] * 3
    assert "nginx -t: the rendered configuration is valid" in result.stderr
