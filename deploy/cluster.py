"""`manage.py cluster`: the docker-compose topology on 127.0.0.1, without Docker.

`up` starts N gunicorn instances (app-1 … app-N, configured by the same gunicorn.conf.py as the
image) and nginx rendered from the same nginx.conf as compose, waits until each answers /health/,
and records every process in var/cluster/state.json. Each process is started in a session of its
own, so its process group holds it and everything it forks (gunicorn's workers, nginx's workers):
`down` signals exactly those groups and then checks that none of their processes is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import connection

from deploy import nginx
from ledger.errors import ClusterError, InvalidRequest

REPO = nginx.NGINX_CONF.parent
GUNICORN_CONF = REPO / "gunicorn.conf.py"
MAX_INSTANCES = 16
# Database connections kept free for everything that is not an app thread: migrate, audit, the
# attack command, an admin's shell, a second checkout's tests.
RESERVED_CONNECTIONS = 10
PROXY = "nginx"
STATE_FILE = "state.json"
POLL_S = 0.1  # how often a starting or stopping process is looked at: there is nothing to wait on


@dataclass
class Member:
    """One process the cluster started (the leader of its own process group)."""

    name: str
    pid: int
    port: int
    log: str
    # The kernel's start time of the process: a pid reused by another program is not ours.
    start_ticks: int | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    run_dir: Path
    members: list[Member]

    @property
    def proxy(self) -> Member | None:
        return next((member for member in self.members if member.name == PROXY), None)

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"members": [asdict(member) for member in self.members]}
        temporary = self.run_dir / f"{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.run_dir / STATE_FILE)  # never a half-written record

    @classmethod
    def load(cls, run_dir: Path) -> Cluster | None:
        try:
            state = json.loads((run_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        return cls(run_dir=run_dir, members=[Member(**member) for member in state["members"]])

    def forget(self) -> None:
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)


def run_dir() -> Path:
    return Path(settings.VAR_DIR) / "cluster"


def gunicorn_defaults() -> dict:
    """gunicorn.conf.py's values under the current environment (workers, threads, timeouts)."""
    return runpy.run_path(str(GUNICORN_CONF))


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a process from /proc, None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return fields[0], int(fields[2]), int(fields[19])


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[2] if stat else None


def _reap(pid: int) -> None:
    # When `up` ran in this very process the members are our children: collect their exit status.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def group_members(member: Member) -> list[int]:
    """Live processes of the member's process group (zombies excluded: they hold nothing)."""
    _reap(member.pid)
    if not _has_proc():
        try:
            os.killpg(member.pid, 0)
        except ProcessLookupError:
            return []
        return [member.pid]
    leader = _proc_stat(member.pid)
    if leader and member.start_ticks is not None and leader[2] != member.start_ticks:
        return []  # the pid (hence the group id) now belongs to a process we did not start
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[1] == member.pid and stat[0] != "Z":
                alive.append(int(entry.name))
    return alive


def _signal_group(member: Member, signum: int) -> None:
    if group_members(member):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(member.pid, signum)


def stop(cluster: Cluster, *, grace_s: float, say: Callable[[str], None]) -> None:
    """Stop every recorded process group: gracefully, then by force; raise if any process is left."""
    # nginx first, so that no request reaches an instance that is shutting down.
    graceful = [(m, signal.SIGQUIT if m.name == PROXY else signal.SIGTERM) for m in cluster.members]
    graceful.sort(key=lambda pair: pair[0].name != PROXY)
    for member, signum in graceful:
        _signal_group(member, signum)
    if not _wait_until_gone(cluster.members, grace_s):
        for member in cluster.members:
            if group_members(member):
                say(f"{member.name} (pid {member.pid}) did not stop within {grace_s:g} s: killing it")
                _signal_group(member, signal.SIGKILL)
        _wait_until_gone(cluster.members, 10)
    left = {member.name: group_members(member) for member in cluster.members}
    left = {name: pids for name, pids in left.items() if pids}
    if left:
        raise ClusterError(f"processes still running after SIGKILL: {left}")


def _wait_until_gone(members: list[Member], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(group_members(member) for member in members):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def is_running(member: Member) -> bool:
    return member.pid in group_members(member)


def find_nginx() -> nginx.Binary:
    path = (
        os.environ.get("NGINX_BIN")
        or shutil.which("nginx")
        or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    )
    if not path:
        raise ClusterError("nginx is not installed: run `scripts/ensure-packages nginx` (or set NGINX_BIN)")
    return nginx.Binary.inspect(path)


def check_connection_budget(*, instances: int, workers: int, threads: int) -> None:
    """Every gunicorn thread holds a database connection: refuse a cluster the server cannot serve."""
    if connection.vendor != "mysql":
        return  # SQLite has no connection limit
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@max_connections")
        (maximum,) = cursor.fetchone()
    needed = instances * workers * threads
    if needed + RESERVED_CONNECTIONS > maximum:
        raise ClusterError(
            f"{instances} instances × {workers} workers × {threads} threads = {needed} database connections,"
            f" plus {RESERVED_CONNECTIONS} reserved, exceeds the server's max_connections ({maximum}):"
            " use fewer instances, workers or threads"
        )


def allocate_ports(base: int, count: int) -> list[int]:
    """`count` free ports on 127.0.0.1: base, base+1, … or, with base 0, any the kernel gives."""
    if base == 0:
        sockets = [socket.socket() for _ in range(count)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return [sock.getsockname()[1] for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
    for port in range(base, base + count):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as error:
                raise ClusterError(
                    f"port {port} on 127.0.0.1 is not free ({error.strerror}): choose another --port"
                ) from None
    return list(range(base, base + count))


def validate(*, instances: int, port: int, workers: int, threads: int) -> None:
    if not 1 <= instances <= MAX_INSTANCES:
        raise InvalidRequest("instances", f"must be from 1 to {MAX_INSTANCES}")
    if port != 0 and not 1024 <= port <= 65535 - instances:
        raise InvalidRequest("port", f"must be 0 (any free ports) or from 1024 to {65535 - instances}")
    for field, value in (("workers", workers), ("threads", threads)):
        if not 1 <= value <= 64:
            raise InvalidRequest(field, "must be from 1 to 64")


def _spawn(name: str, command: list[str], *, env: dict, port: int, log: Path) -> tuple[Member, subprocess.Popen]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # A session (and process group) of its own: `down` signals the whole group, and a
            # Ctrl-C in the terminal that ran `up` does not reach it.
            start_new_session=True,
        )
    return Member(name=name, pid=process.pid, port=port, log=str(log), start_ticks=start_ticks(process.pid)), process


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(member: Member, process: subprocess.Popen, *, url: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail at once if the process exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        if process.poll() is not None:
            raise ClusterError(
                f"{member.name} exited with status {process.returncode} before answering {url};"
                f" end of {member.log}:\n{_tail(member.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}: {error.read(300).decode(errors='replace')}"
        except OSError as error:
            last = str(error)
        if time.monotonic() > deadline:
            raise ClusterError(f"{member.name} did not become healthy within {timeout_s:g} s at {url} ({last})")
        time.sleep(POLL_S)


def layout_for(ports: list[int], directory: Path) -> nginx.LocalLayout:
    """nginx on the first port, balancing instances on the others; files under `directory`."""
    return nginx.LocalLayout(
        listen=f"127.0.0.1:{ports[0]}",
        members=[f"127.0.0.1:{port}" for port in ports[1:]],
        static_root=Path(settings.STATIC_ROOT),
        run_dir=directory,
    )


def check_config(*, instances: int, port: int) -> tuple[str, str]:
    """The nginx.conf `up --port PORT` would run, and nginx -t's verdict on it."""
    validate(instances=instances, port=port, workers=1, threads=1)
    if port == 0:
        raise InvalidRequest("port", "must be a port number here: `up --port 0` picks its ports when it starts")
    binary = find_nginx()
    ports = list(range(port, port + instances + 1))
    text = nginx.render(nginx.load(), layout_for(ports, run_dir()), binary)
    # Checked in a scratch directory: nginx -t opens the logs and creates the temp directories.
    with tempfile.TemporaryDirectory(prefix="cluster-config-") as scratch:
        write_checked_config(binary, layout_for(ports, Path(scratch)))
    return text, f"nginx -t: the rendered configuration is valid ({binary.path})"


def write_checked_config(binary: nginx.Binary, layout: nginx.LocalLayout) -> Path:
    """Render nginx.conf for `layout` into its run directory; raise with nginx's words if nginx -t refuses it."""
    layout.make_dirs()
    conf = layout.run_dir / "nginx.conf"
    conf.write_text(nginx.render(nginx.load(), layout, binary))
    checked = binary.test(conf=conf, prefix=layout.run_dir, error_log=layout.error_log)
    if checked.returncode != 0:
        raise ClusterError(f"nginx -t refused {conf}:\n{checked.stderr.strip()}")
    return conf


def start_instance(name: str, port: int, *, workers: int, threads: int, record: Cluster) -> subprocess.Popen:
    """One gunicorn instance, configured like a compose app service (gunicorn.conf.py, env)."""
    directory = record.run_dir / name
    directory.mkdir(parents=True)
    env = {
        **os.environ,
        "INSTANCE_ID": name,
        "VAR_DIR": str(settings.VAR_DIR),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_THREADS": str(threads),
        "GUNICORN_CONTROL_SOCKET": str(directory / "gunicorn.ctl"),
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "prometheus"),
    }
    command = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "project.wsgi:application"]
    member, process = _spawn(name, command, env=env, port=port, log=record.run_dir / f"{name}.log")
    record.members.append(member)
    record.save()  # recorded at once: `down` can stop it even if `up` dies now
    return process


def start_nginx(
    binary: nginx.Binary, layout: nginx.LocalLayout, *, port: int, record: Cluster
) -> tuple[Member, subprocess.Popen]:
    """Render nginx.conf for `layout`, check it with `nginx -t`, start nginx in the foreground."""
    conf = write_checked_config(binary, layout)
    arguments = nginx.Binary.arguments(conf=conf, prefix=layout.run_dir, error_log=layout.error_log)
    # `daemon off`: the process we start is nginx's master, whose pid we record.
    command = [binary.path, *arguments, "-g", "daemon off;"]
    member, process = _spawn(PROXY, command, env=dict(os.environ), port=port, log=layout.run_dir / "nginx.log")
    record.members.append(member)
    record.save()
    return member, process


def prepare_database(say: Callable[[str], None]) -> None:
    """What compose's one-shot `migrate` service does, plus the static files nginx serves."""
    say("migrating the database and collecting static files")
    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)


def up(
    *, instances: int, port: int, workers: int, threads: int, timeout_s: float, say: Callable[[str], None]
) -> Cluster:
    validate(instances=instances, port=port, workers=workers, threads=threads)
    directory = run_dir()
    existing = Cluster.load(directory)
    if existing is not None:
        running = [f"{m.name} (pid {m.pid})" for m in existing.members if group_members(m)]
        if running:
            raise ClusterError(f"a cluster is already running: {', '.join(running)}; stop it with `cluster down`")
        existing.forget()
    binary = find_nginx()
    ports = allocate_ports(port, instances + 1)
    call_command("createdb")
    check_connection_budget(instances=instances, workers=workers, threads=threads)
    prepare_database(say)

    shutil.rmtree(directory, ignore_errors=True)  # logs of a previous run
    directory.mkdir(parents=True)
    cluster = Cluster(run_dir=directory, members=[])
    try:
        processes = []
        for number, instance_port in enumerate(ports[1:], start=1):
            process = start_instance(f"app-{number}", instance_port, workers=workers, threads=threads, record=cluster)
            processes.append(process)
        say(f"started {instances} gunicorn instance(s) × {workers} workers × {threads} threads; waiting for /health/")
        for member, process in zip(cluster.members, processes, strict=True):
            wait_healthy(member, process, url=f"{member.url}/health/", timeout_s=timeout_s)

        member, process = start_nginx(binary, layout_for(ports, directory), port=ports[0], record=cluster)
        wait_healthy(member, process, url=f"{member.url}/nginx-health", timeout_s=timeout_s)
        wait_healthy(member, process, url=f"{member.url}/health/", timeout_s=timeout_s)
    except BaseException:
        say("start failed: stopping what was started")
        stop(cluster, grace_s=10, say=say)
        cluster.forget()
        raise
    return cluster


def down(*, grace_s: float, say: Callable[[str], None]) -> Cluster | None:
    """Stop the recorded cluster; return it (None if none was recorded)."""
    cluster = Cluster.load(run_dir())
    if cluster is None:
        return None
    stop(cluster, grace_s=grace_s, say=say)
    cluster.forget()
    return cluster


@dataclass(frozen=True)
class MemberStatus:
    name: str
    pid: int
    url: str
    running: bool
    health: str  # "200", "503", or why there was no answer

    @property
    def ok(self) -> bool:
        return self.running and self.health == "200"


def health_of(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/health/", timeout=3) as response:
            return str(response.status)
    except urllib.error.HTTPError as error:
        return str(error.code)
    except OSError as error:
        return f"no answer ({error})"


def status() -> list[MemberStatus] | None:
    cluster = Cluster.load(run_dir())
    if cluster is None:
        return None
    statuses = []
    for member in cluster.members:
        running = is_running(member)
        health = health_of(member.url) if running else "not running"
        statuses.append(MemberStatus(member.name, member.pid, member.url, running, health))
    return statuses
