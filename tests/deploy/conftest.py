"""Readers for the deployment files (docker-compose.yml, Dockerfile, Prometheus, Grafana) and a real nginx."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.db import connection

from deploy import cluster, nginx
from ledger.errors import ClusterError
from tests.support import Exposition, parse_exposition

REPO = nginx.NGINX_CONF.parent
# Where compose mounts the secret `metrics_token` in the Prometheus container (its default target).
TOKEN_FILE = "/run/secrets/metrics_token"
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: object) -> str:
    """Compose's ${VAR:-default} → default; a variable without default (${VAR}, ${VAR:?why}) → <VAR>."""
    return _VARIABLE.sub(lambda m: m["arg"] if m["op"] == ":-" else f"<{m['name']}>", str(value))


def variables(text: str) -> dict[str, str | None]:
    """Every ${VAR…} compose interpolates: name → how it is used (":-", ":?" or None)."""
    return {m["name"]: m["op"] for m in _VARIABLE.finditer(text)}


@dataclass
class Compose:
    data: dict

    @property
    def services(self) -> dict[str, dict]:
        return self.data["services"]

    @property
    def app_services(self) -> dict[str, dict]:
        """The gunicorn instances: the app image running its default command."""
        return {
            name: service
            for name, service in self.services.items()
            if service.get("build", {}).get("target") == "app" and "command" not in service
        }

    def environment(self, name: str) -> dict[str, str]:
        return {key: interpolate(value) for key, value in self.services[name].get("environment", {}).items()}

    def ports(self, name: str) -> list[tuple[int, int]]:
        """(published, container) pairs."""
        pairs = []
        for mapping in self.services[name].get("ports", []):
            *_, published, target = str(mapping).split(":")
            pairs.append((int(published), int(target)))
        return pairs

    def container_port(self, name: str) -> int:
        (pair,) = self.ports(name)
        return pair[1]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for word, arguments in self.instructions if word == keyword]

    def text(self) -> str:
        return "\n".join(f"{word} {arguments}" for word, arguments in self.instructions)


def dockerfile_stages(path: Path = REPO / "Dockerfile") -> dict[str, Stage]:
    """Stages by name, with continuation lines joined and global ARG defaults substituted in FROM."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    arguments: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and current is None and "=" in rest:
            key, _, default = rest.partition("=")
            arguments[key] = default
        elif word == "FROM":
            base, _, name = re.sub(r"\$\{(\w+)\}", lambda m: arguments.get(m[1], m[0]), rest).partition(" AS ")
            current = stages[name.strip()] = Stage(name=name.strip(), base=base.strip())
        elif current is not None:
            current.instructions.append((word, " ".join(rest.split())))
    return stages


@pytest.fixture(scope="session")
def compose() -> Compose:
    return Compose(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


@pytest.fixture(scope="session")
def stages() -> dict[str, Stage]:
    return dockerfile_stages()


@pytest.fixture(scope="session")
def prometheus() -> dict:
    return yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())


@pytest.fixture(scope="session")
def nginx_config() -> nginx.Block:
    return nginx.load()


@pytest.fixture(scope="session")
def gunicorn_settings() -> dict:
    return cluster.gunicorn_defaults()


@pytest.fixture(scope="session")
def nginx_binary() -> nginx.Binary:
    try:
        return cluster.find_nginx()
    except ClusterError as missing:
        if os.environ.get("CI"):
            raise  # .ci/run installs nginx: never skip these tests there
        pytest.skip(str(missing))


@pytest.fixture
def cluster_env(tmp_path, django_db_setup, nginx_binary) -> dict[str, str]:
    """The test database and test Redis db; var/ (state, logs, SQLite file) and static files in tmp_path."""
    env = {
        **os.environ,
        "VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "REDIS_URL": settings.REDIS_URL,
        "NGINX_BIN": nginx_binary.path,
    }
    if connection.vendor == "mysql":
        db = connection.settings_dict
        env["DATABASE_URL"] = f"mysql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT'] or 3306}/{db['NAME']}"
    else:
        env.pop("DATABASE_URL", None)  # a fresh SQLite file under VAR_DIR
    return env


def manage(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`manage.py ARGS` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def recorded(env: dict) -> cluster.Cluster | None:
    return cluster.Cluster.load(Path(env["VAR_DIR"]) / "cluster")


def up(env: dict, *args: str):
    """`cluster up` on free ports unless the arguments name one."""
    return manage(env, "cluster", "up", *(() if "--port" in args else ("--port", "0")), *args)


@contextmanager
def running_nginx(binary: nginx.Binary, *, members: list[str], run_dir: Path, static_root: Path) -> Iterator[str]:
    """nginx.conf rendered for `members`, running until the block ends; yields its base URL."""
    (port,) = cluster.allocate_ports(0, 1)
    layout = nginx.LocalLayout(listen=f"127.0.0.1:{port}", members=members, static_root=static_root, run_dir=run_dir)
    record = cluster.Cluster(run_dir=run_dir, members=[])
    try:
        member, process = cluster.start_nginx(binary, layout, port=port, record=record)
        cluster.wait_healthy(member, process, url=f"{member.url}/nginx-health", timeout_s=30)
        yield member.url
    finally:
        cluster.stop(record, grace_s=10, say=print)


class RecordingUpstream:
    """A real HTTP server standing in for an app instance behind nginx: it records what nginx sends.

    `answer=True`: replies 200 naming itself in X-Instance; `answer=False`: reads the request and
    closes the connection without a reply (a crashed instance, as nginx sees it).
    """

    def __init__(self, name: str, *, answer: bool) -> None:
        self.name, self.answer = name, answer
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like gunicorn's gthread workers

            def setup(self) -> None:
                super().setup()
                upstream.connections += 1

            def handle_one(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream.requests.append((self.command, dict(self.headers)))
                if not upstream.answer:
                    self.close_connection = True
                    return
                body = json.dumps(dict(self.headers)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Instance", upstream.name)
                self.send_header("X-Request-ID", self.headers.get("X-Request-ID", ""))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = handle_one

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`promtool ARGS` in the repository; fails the test with promtool's words unless it succeeds."""
    if not shutil.which("promtool"):
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool (Debian package prometheus) is not installed")
    result = subprocess.run(["promtool", *args], cwd=REPO, input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def scrape(url: str, *, token: str | None = None) -> Exposition:
    """GET URL/metrics as Prometheus does (with the bearer token, if any)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=headers), timeout=30) as response:
        return parse_exposition(response.read().decode())
