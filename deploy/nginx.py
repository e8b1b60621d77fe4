"""nginx.conf as data: read it (tests, the cluster) and render it for a local cluster.

The repository's nginx.conf is written for docker-compose.yml (upstream members `app-N:8000`,
static files under /app/staticfiles/, logs to the container's stdout/stderr). `render` returns the
same configuration with only the parts that name the host's layout replaced, so the proxy rules
(keep-alive, timeouts, retries, headers) exist once. The file is parsed and rebuilt with crossplane,
nginx's own parser, rather than edited as text: a directive that moved or vanished fails loudly.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import crossplane

NGINX_CONF = Path(__file__).resolve().parent.parent / "nginx.conf"
UPSTREAM = "ledger_app"
STATIC_LOCATION = "/static/"


class NginxConfError(ValueError):
    """nginx.conf does not have the shape the deployment relies on."""


Block = list[dict]


def load(path: Path = NGINX_CONF) -> Block:
    """The parsed main context of an nginx config file (includes are not followed)."""
    parsed = crossplane.parse(str(path), single=True, comments=False, catch_errors=False)
    if parsed["status"] != "ok":
        raise NginxConfError(f"{path}: {parsed['errors']}")
    return parsed["config"][0]["parsed"]


def directives(block: Block, name: str) -> list[dict]:
    return [stmt for stmt in block if stmt["directive"] == name]


def one(block: Block, name: str, where: str, *args: str) -> dict:
    """The single `name` directive (whose first arguments are `args`) in `block`."""
    found = [stmt for stmt in directives(block, name) if stmt["args"][: len(args)] == list(args)]
    if len(found) != 1:
        label = " ".join([name, *args])
        raise NginxConfError(f"nginx.conf: expected exactly one `{label}` in {where}, found {len(found)}")
    return found[0]


def http(config: Block) -> Block:
    return one(config, "http", "the main context")["block"]


def upstream(config: Block) -> Block:
    return one(http(config), "upstream", "http", UPSTREAM)["block"]


def server(config: Block) -> Block:
    return one(http(config), "server", "http")["block"]


def proxy_location(config: Block) -> Block:
    return one(server(config), "location", "server", "/")["block"]


def upstream_members(config: Block) -> list[str]:
    """The `host:port` of every server of the app upstream, in order."""
    return [stmt["args"][0] for stmt in directives(upstream(config), "server")]


def seconds(value: str) -> float:
    """An nginx time value ("60s", "1m", "500ms", "30") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    if not match:
        raise NginxConfError(f"nginx.conf: {value!r} is not a time value")
    return int(match[1]) * units[match[2] or "s"]


@dataclass(frozen=True)
class Binary:
    """An installed nginx: what it was compiled with decides which temp paths a config must move."""

    path: str
    configure: str

    @classmethod
    def inspect(cls, path: str) -> Binary:
        result = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10, check=True)
        return cls(path=path, configure=result.stderr + result.stdout)

    def has_module(self, module: str) -> bool:
        return f"--without-http_{module}_module" not in self.configure

    @property
    def conf_dir(self) -> Path:
        match = re.search(r"--conf-path=(\S+)", self.configure)
        return Path(match[1]).parent if match else Path("/etc/nginx")

    def test(self, *, conf: Path, prefix: Path, error_log: Path) -> subprocess.CompletedProcess:
        """`nginx -t` on a config file; the result's returncode and stderr say what is wrong."""
        return subprocess.run(
            [self.path, "-t", *self.arguments(conf=conf, prefix=prefix, error_log=error_log)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    @staticmethod
    def arguments(*, conf: Path, prefix: Path, error_log: Path) -> list[str]:
        # -e: nginx writes to its compiled-in error log before it reads the config (/var/log/nginx).
        return ["-p", f"{prefix}/", "-e", str(error_log), "-c", str(conf)]


@dataclass(frozen=True)
class LocalLayout:
    """Where a local nginx listens, which instances it balances and where its files go."""

    listen: str  # "127.0.0.1:8080"
    members: list[str]  # ["127.0.0.1:8081", ...]
    static_root: Path
    run_dir: Path  # pid, logs and temp files

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.run_dir / "nginx-error.log"

    @property
    def access_log(self) -> Path:
        return self.run_dir / "nginx-access.log"

    @property
    def temp_dir(self) -> Path:
        return self.run_dir / "temp"

    def make_dirs(self) -> None:
        """nginx creates its temp directories but not their parent."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)


TEMP_PATHS = {
    "client_body_temp_path": None,
    "proxy_temp_path": "proxy",
    "fastcgi_temp_path": "fastcgi",
    "uwsgi_temp_path": "uwsgi",
    "scgi_temp_path": "scgi",
}


def render(config: Block, layout: LocalLayout, binary: Binary) -> str:
    """nginx.conf for a local cluster: compose's file with the host's addresses and paths."""
    config = copy.deepcopy(config)
    one(config, "pid", "the main context")["args"] = [str(layout.pid_file)]
    error_log = one(config, "error_log", "the main context")
    error_log["args"] = [str(layout.error_log), *error_log["args"][1:]]
    if os.geteuid() == 0:
        # Workers run as the user who started the cluster, like the gunicorn instances (as root,
        # nginx would otherwise switch to `nobody`, who cannot read a private checkout).
        config.insert(0, {"directive": "user", "args": ["root"]})

    http_block = http(config)
    mime_types = one(http_block, "include", "http")
    if not Path(mime_types["args"][0]).exists():
        mime_types["args"] = [str(binary.conf_dir / "mime.types")]
    access_log = one(http_block, "access_log", "http")
    access_log["args"] = [str(layout.access_log), *access_log["args"][1:]]
    # The compiled-in temp directories (/var/lib/nginx) belong to the system's nginx.
    temp_paths = [d for d, module in TEMP_PATHS.items() if module is None or binary.has_module(module)]
    for index, directive in enumerate(temp_paths):
        path = layout.temp_dir / directive.removesuffix("_temp_path")
        http_block.insert(index, {"directive": directive, "args": [str(path)]})

    servers = upstream(config)
    template = directives(servers, "server")
    if not template:
        raise NginxConfError(f"nginx.conf: upstream {UPSTREAM} has no server")
    options = template[0]["args"][1:]
    kept = [stmt for stmt in servers if stmt["directive"] != "server"]
    servers[:] = [{"directive": "server", "args": [member, *options]} for member in layout.members] + kept

    one(server(config), "listen", "server")["args"] = [layout.listen]
    static = one(server(config), "location", "server", STATIC_LOCATION)["block"]
    one(static, "alias", f"location {STATIC_LOCATION}")["args"] = [f"{layout.static_root}/"]

    header = "# Rendered from nginx.conf by `manage.py cluster up` (deploy/nginx.py). Do not edit.\n"
    return header + crossplane.build(config) + "\n"
