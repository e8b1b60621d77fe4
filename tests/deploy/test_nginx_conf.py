"""nginx.conf: the proxy rules, their agreement with gunicorn and the settings, and a real nginx
running the rendered file in front of recording upstreams."""

from __future__ import annotations

import copy
import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from deploy import nginx
from ledger.middleware import _VALID_REQUEST_ID
from tests.deploy.conftest import RecordingUpstream, running_nginx


def proxy(nginx_config) -> dict[str, list[list[str]]]:
    """The `location /` directives: name → list of argument lists."""
    found: dict[str, list[list[str]]] = {}
    for stmt in nginx.proxy_location(nginx_config):
        found.setdefault(stmt["directive"], []).append(stmt["args"])
    return found


def test_upstream_connections_are_kept_alive(nginx_config):
    rules = proxy(nginx_config)
    assert int(nginx.one(nginx.upstream(nginx_config), "keepalive", "upstream")["args"][0]) > 0
    assert rules["proxy_pass"] == [[f"http://{nginx.UPSTREAM}"]]
    assert rules["proxy_http_version"] == [["1.1"]]
    assert ["Connection", ""] in rules["proxy_set_header"]


def test_nginx_closes_idle_upstream_connections_before_gunicorn_does(nginx_config, gunicorn_settings):
    idle = nginx.one(nginx.upstream(nginx_config), "keepalive_timeout", "upstream")["args"][0]
    assert nginx.seconds(idle) < gunicorn_settings["keepalive"]


def test_forwarded_headers_and_request_id_are_passed(nginx_config):
    headers = dict(proxy(nginx_config)["proxy_set_header"])
    assert headers == {
        "Connection": "",
        "Host": "$http_host",
        "X-Real-IP": "$remote_addr",
        "X-Forwarded-For": "$proxy_add_x_forwarded_for",
        "X-Forwarded-Proto": "$scheme",
        "X-Request-ID": "$ledger_request_id",
    }


def test_nginx_accepts_exactly_the_request_ids_the_app_accepts(nginx_config):
    (request_id_map,) = [
        stmt for stmt in nginx.directives(nginx.http(nginx_config), "map") if stmt["args"][1] == "$ledger_request_id"
    ]
    entries = {stmt["directive"]: stmt["args"] for stmt in request_id_map["block"]}
    assert request_id_map["args"][0] == "$http_x_request_id"
    assert entries[f"~{_VALID_REQUEST_ID.pattern}"] == ["$http_x_request_id"]
    assert entries["default"] == ["$request_id"]


def test_access_log_names_the_request_and_the_instance(nginx_config):
    (log_format,) = nginx.directives(nginx.http(nginx_config), "log_format")
    line = "".join(log_format["args"][1:])
    assert "$ledger_request_id" in line and "$upstream_http_x_instance" in line and "$upstream_addr" in line
    assert nginx.one(nginx.http(nginx_config), "access_log", "http")["args"][1] == log_format["args"][0]


def test_only_idempotent_requests_are_retried_on_another_instance(nginx_config):
    (retry,) = proxy(nginx_config)["proxy_next_upstream"]
    assert "non_idempotent" not in retry
    assert set(retry) <= {"error", "timeout", "http_502", "http_503", "http_504"}


def test_timeouts_outlast_the_slowest_deduction(nginx_config, gunicorn_settings):
    # The slowest deduction: a lock wait, then a row lock wait, then the teaching think time.
    slowest = settings.LEDGER_LOCK_WAIT_S + settings.DB_LOCK_TIMEOUT_S + settings.LEDGER_MAX_THINK_MS / 1000
    read_timeout = nginx.seconds(proxy(nginx_config)["proxy_read_timeout"][0][0])
    assert slowest < gunicorn_settings["timeout"] < read_timeout
    assert slowest <= gunicorn_settings["graceful_timeout"]


def rendered(tmp_path: Path, nginx_config, binary, members=("127.0.0.1:18401", "127.0.0.1:18402")) -> Path:
    layout = nginx.LocalLayout(
        listen="127.0.0.1:18400", members=list(members), static_root=tmp_path / "static", run_dir=tmp_path
    )
    layout.make_dirs()
    path = tmp_path / "nginx.conf"
    path.write_text(nginx.render(nginx_config, layout, binary))
    return path


REPLACED = {"pid", "error_log", "access_log", "include", "listen", "alias"}
ADDED = {"user", "server", *nginx.TEMP_PATHS}


def normalised(block: nginx.Block, *, inside_upstream: bool = False) -> list:
    """The tree without line numbers, with what rendering may change blanked out."""
    result = []
    for stmt in block:
        name = stmt["directive"]
        if name in ADDED and (name != "server" or inside_upstream):
            continue
        args = ["…"] if name in REPLACED else stmt["args"]
        children = stmt.get("block")
        upstream = name == "upstream"
        result.append((name, args, None if children is None else normalised(children, inside_upstream=upstream)))
    return result


def test_rendering_changes_only_addresses_and_paths(tmp_path, nginx_config, nginx_binary):
    local = nginx.load(rendered(tmp_path, nginx_config, nginx_binary))
    assert normalised(local) == normalised(nginx_config)
    assert nginx.upstream_members(local) == ["127.0.0.1:18401", "127.0.0.1:18402"]
    for stmt in nginx.directives(nginx.upstream(local), "server"):
        assert stmt["args"][1:] == nginx.directives(nginx.upstream(nginx_config), "server")[0]["args"][1:]
    assert nginx.one(nginx.server(local), "listen", "server")["args"] == ["127.0.0.1:18400"]
    assert nginx.one(local, "pid", "main")["args"] == [str(tmp_path / "nginx.pid")]


def test_rendering_fails_loudly_when_a_directive_it_replaces_is_missing(nginx_config, nginx_binary, tmp_path):
    broken = copy.deepcopy(nginx_config)
    server_block = nginx.server(broken)
    server_block[:] = [stmt for stmt in server_block if stmt["directive"] != "listen"]
    layout = nginx.LocalLayout(listen="127.0.0.1:1", members=["127.0.0.1:2"], static_root=tmp_path, run_dir=tmp_path)
    with pytest.raises(nginx.NginxConfError, match="exactly one `listen`"):
        nginx.render(broken, layout, nginx_binary)


def test_nginx_accepts_the_rendered_config(tmp_path, nginx_config, nginx_binary):
    conf = rendered(tmp_path, nginx_config, nginx_binary)
    result = nginx_binary.test(conf=conf, prefix=tmp_path, error_log=tmp_path / "error.log")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def request(url: str, *, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    data = b"{}" if method == "POST" else None
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, method=method, headers=headers or {}), timeout=20
        ) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_a_post_that_reached_an_instance_is_never_resent_to_another(tmp_path, nginx_binary):
    with (
        RecordingUpstream("app-1", answer=False) as one,
        RecordingUpstream("app-2", answer=False) as two,
        running_nginx(nginx_binary, members=[one.address, two.address], run_dir=tmp_path, static_root=tmp_path) as url,
    ):
        status, headers, _ = request(f"{url}/api/accounts/1/deductions/", method="POST")
        assert status == 502
        assert len(one.requests) + len(two.requests) == 1  # a second try could deduct twice
        assert len(headers["X-Request-ID"]) == 32  # nginx names even the requests no instance answered


def test_a_get_is_retried_once_on_another_instance(tmp_path, nginx_binary):
    with (
        RecordingUpstream("app-1", answer=False) as one,
        RecordingUpstream("app-2", answer=False) as two,
        running_nginx(nginx_binary, members=[one.address, two.address], run_dir=tmp_path, static_root=tmp_path) as url,
    ):
        status, _, _ = request(f"{url}/api/accounts/1/balance/")
        assert status == 502
        assert (len(one.requests), len(two.requests)) == (1, 1)


def test_nginx_forwards_identity_headers_and_reuses_upstream_connections(tmp_path, nginx_binary):
    with (
        RecordingUpstream("app-1", answer=True) as one,
        running_nginx(nginx_binary, members=[one.address], run_dir=tmp_path, static_root=tmp_path) as url,
    ):
        status, headers, body = request(f"{url}/health/", headers={"X-Request-ID": "caller-chosen-id-1"})
        seen = json.loads(body)
        assert status == 200
        assert headers["X-Instance"] == "app-1"
        assert headers["X-Request-ID"] == seen["X-Request-ID"] == "caller-chosen-id-1"
        assert seen["X-Forwarded-For"] == seen["X-Real-IP"] == "127.0.0.1"
        assert seen["X-Forwarded-Proto"] == "http"
        assert seen["Host"] == url.removeprefix("http://")
        assert "Connection" not in seen  # HTTP/1.1 keep-alive, not "close"

        _, headers, body = request(f"{url}/health/", headers={"X-Request-ID": "bad id!"})
        generated = json.loads(body)["X-Request-ID"]
        assert generated != "bad id!" and _VALID_REQUEST_ID.match(generated)
        assert headers["X-Request-ID"] == generated

        # Ten requests over one client connection (so one nginx worker serves them all): nginx
        # sends them down the upstream connection it keeps open instead of opening one each.
        before = one.connections
        client = http.client.HTTPConnection(url.removeprefix("http://"), timeout=20)
        try:
            for _ in range(10):
                client.request("GET", "/health/")
                assert client.getresponse().read()
        finally:
            client.close()
        assert one.connections - before <= 1
