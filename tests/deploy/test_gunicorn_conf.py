"""gunicorn.conf.py: threads for a database-bound app, values from the environment, metrics hooks."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from deploy import cluster
from tests.deploy.conftest import REPO


def load(monkeypatch, **environment: str) -> dict:
    for name in ("GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_BIND", "GUNICORN_CONTROL_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return cluster.gunicorn_defaults()


def test_threaded_workers_with_defaults_for_a_database_bound_app(monkeypatch):
    conf = load(monkeypatch)
    assert conf["worker_class"] == "gthread"
    assert (conf["workers"], conf["threads"]) == (2, 4)
    assert conf["bind"] == "127.0.0.1:8000"
    assert conf["forwarded_allow_ips"] == os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


def test_sizes_and_address_come_from_the_environment(monkeypatch):
    conf = load(monkeypatch, GUNICORN_WORKERS="3", GUNICORN_THREADS="8", GUNICORN_BIND="0.0.0.0:9000")
    assert (conf["workers"], conf["threads"], conf["bind"]) == (3, 8, "0.0.0.0:9000")


def test_access_log_carries_request_id_and_instance(monkeypatch):
    line = load(monkeypatch)["access_log_format"]
    assert "%({x-request-id}o)s" in line and "%({x-instance}o)s" in line


def test_control_socket_only_where_an_instance_names_its_own(monkeypatch, tmp_path):
    assert load(monkeypatch)["control_socket_disable"] is True
    conf = load(monkeypatch, GUNICORN_CONTROL_SOCKET=str(tmp_path / "app-1.ctl"))
    assert conf["control_socket_disable"] is False and conf["control_socket"] == str(tmp_path / "app-1.ctl")


def test_on_starting_empties_the_metrics_directory(monkeypatch, tmp_path):
    directory = tmp_path / "prometheus"
    (directory / "old").mkdir(parents=True)
    (directory / "counter_123.db").write_bytes(b"stale")
    conf = load(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(directory))
    conf["on_starting"](None)
    assert directory.is_dir() and list(directory.iterdir()) == []


def test_on_starting_creates_a_missing_metrics_directory(monkeypatch, tmp_path):
    conf = load(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "new"))
    conf["on_starting"](None)
    assert (tmp_path / "new").is_dir()


def test_child_exit_drops_the_live_gauges_of_the_dead_worker_only(monkeypatch, tmp_path):
    for name in ("gauge_livesum_111.db", "gauge_liveall_111.db", "counter_111.db", "gauge_livesum_222.db"):
        (tmp_path / name).write_bytes(b"")
    conf = load(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    conf["child_exit"](None, SimpleNamespace(pid=111))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["counter_111.db", "gauge_livesum_222.db"]


def test_gunicorn_accepts_the_configuration():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--check-config",
            "--config",
            "gunicorn.conf.py",
            "project.wsgi:application",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
