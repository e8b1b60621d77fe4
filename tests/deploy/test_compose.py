"""docker-compose.yml, the Dockerfile, nginx.conf and the Prometheus/Grafana files agree with each
other and with the settings — checked by parsing them, since CI has no Docker engine."""

from __future__ import annotations

import ipaddress
import re
import shutil
from urllib.parse import urlsplit

import dj_database_url
import yaml

from deploy import cluster, nginx
from tests.deploy.conftest import REPO, TOKEN_FILE, interpolate, promtool, variables

SERVICES = {"mysql", "redis", "migrate", "app-1", "app-2", "nginx", "prometheus", "grafana"}
SECRETS = {"SECRET_KEY", "MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "METRICS_TOKEN"}


def names_read_from_environment() -> set[str]:
    """Environment variables the app reads: settings, gunicorn.conf.py, the embedded Redis default."""
    sources = ["project/settings.py", "project/embedded_redis.py", "gunicorn.conf.py"]
    pattern = re.compile(r"""(?:environ\.get|env_\w+|_env_int|environ\[)\(?\s*["']([A-Z][A-Z0-9_]+)["']""")
    names = {name for source in sources for name in pattern.findall((REPO / source).read_text())}
    # Read by prometheus_client itself, at import (see gunicorn.conf.py).
    return names | {"PROMETHEUS_MULTIPROC_DIR"}


def test_compose_has_the_designed_services(compose):
    assert set(compose.services) == SERVICES


def test_every_app_instance_has_its_own_instance_id_named_after_its_service(compose):
    assert set(compose.app_services) == {"app-1", "app-2"}
    for name in compose.app_services:
        assert compose.environment(name)["INSTANCE_ID"] == name


def test_published_ports_are_the_designed_ones(compose, stages):
    app_port = int(re.search(r"GUNICORN_BIND=\S+:(\d+)", stages["app"].text())[1])
    assert compose.ports("app-1") == [(8081, app_port)]
    assert compose.ports("app-2") == [(8082, app_port)]
    assert compose.ports("nginx") == [(8080, 8080)]
    assert compose.ports("prometheus") == [(9090, 9090)]
    assert compose.ports("grafana") == [(3000, 3000)]
    assert f"EXPOSE {app_port}" in stages["app"].text()


def test_nginx_balances_exactly_the_app_services_on_their_container_port(compose, nginx_config):
    expected = [f"{name}:{compose.container_port(name)}" for name in compose.app_services]
    assert nginx.upstream_members(nginx_config) == expected


def test_nginx_listens_on_the_port_compose_publishes(compose, nginx_config, stages):
    listen = nginx.one(nginx.server(nginx_config), "listen", "server")["args"]
    assert listen == [str(compose.container_port("nginx"))]
    assert f"EXPOSE {listen[0]}" in stages["nginx"].text()


def test_prometheus_scrapes_every_app_instance_directly_never_nginx(compose, prometheus):
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "ledger"]
    targets = [target for config in job["static_configs"] for target in config["targets"]]
    assert targets == [f"{name}:{compose.container_port(name)}" for name in compose.app_services]
    assert job["metrics_path"] == "/metrics"
    assert not any(target.startswith("nginx") for target in targets)


def test_prometheus_labels_each_target_with_the_instance_id(compose, prometheus):
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "ledger"]
    (relabel,) = [rule for rule in job["relabel_configs"] if rule["target_label"] == "instance"]
    for name in compose.app_services:
        address = f"{name}:{compose.container_port(name)}"
        match = re.fullmatch(relabel["regex"], address)  # Prometheus anchors relabel regexes
        instance = match.expand(relabel["replacement"].replace("$1", r"\1"))
        assert instance == compose.environment(name)["INSTANCE_ID"]


def test_nginx_does_not_serve_the_metrics_of_a_random_instance(nginx_config):
    metrics = nginx.one(nginx.server(nginx_config), "location", "server", "=", "/metrics")["block"]
    assert nginx.directives(metrics, "proxy_pass") == []
    assert nginx.one(metrics, "return", "location = /metrics")["args"] == ["404"]


def test_prometheus_config_is_valid_for_promtool(tmp_path):
    # The token file only exists inside the container (a compose secret): check a copy that points
    # at a local one, next to a copy of the rules, so promtool also loads and checks rule_files.
    config = (REPO / "deploy/prometheus/prometheus.yml").read_text()
    (tmp_path / "metrics_token").write_text("token")
    (tmp_path / "prometheus.yml").write_text(config.replace(TOKEN_FILE, str(tmp_path / "metrics_token")))
    shutil.copy(REPO / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert "1 rule files found" in result.stdout


def test_grafana_is_provisioned_from_the_repository(compose):
    volumes = [volume.split(":") for volume in compose.services["grafana"]["volumes"]]
    mounts = {source: target for source, target, *_ in volumes if source.startswith("./")}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    url = urlsplit(source["url"])
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")
    assert url.hostname == "prometheus" and url.port == compose.container_port("prometheus")

    providers = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    assert (REPO / "deploy/grafana/dashboards").is_dir()


def test_every_long_running_service_has_a_healthcheck(compose, stages):
    for name, service in compose.services.items():
        check = service.get("healthcheck")
        if name == "migrate":
            assert check == {"disable": True}  # one-shot: its exit status is what the apps wait for
            continue
        if check is None:
            # No check in compose: the image's own HEALTHCHECK applies.
            assert len(stages[service["build"]["target"]].all("HEALTHCHECK")) == 1, name
        else:
            assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_images_check_the_right_endpoints(stages):
    (app_check,) = stages["app"].all("HEALTHCHECK")
    (proxy_check,) = stages["nginx"].all("HEALTHCHECK")
    assert "http://127.0.0.1:8000/health/" in app_check
    assert "http://127.0.0.1:8080/nginx-health" in proxy_check


def test_depends_on_waits_for_health_or_completion(compose):
    for name, service in compose.services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in compose.services
            has_check = compose.services[dependency].get("healthcheck", {}) != {"disable": True}
            expected = "service_healthy" if has_check else "service_completed_successfully"
            assert rule == {"condition": expected}, f"{name} → {dependency}"
    for name in compose.app_services:
        assert set(compose.services[name]["depends_on"]) == {"mysql", "redis", "migrate"}
    assert set(compose.services["nginx"]["depends_on"]) == set(compose.app_services)
    assert set(compose.services["prometheus"]["depends_on"]) == set(compose.app_services)
    assert compose.services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]


def test_mysql_8_keeps_its_data_in_a_named_volume(compose):
    mysql = compose.services["mysql"]
    assert mysql["image"].startswith("mysql:8")
    assert "mysql-data:/var/lib/mysql" in mysql["volumes"]
    assert "mysql-data" in compose.data["volumes"]


def test_apps_reach_mysql_and_redis_by_service_name(compose):
    for name in [*compose.app_services, "migrate"]:
        environment = compose.environment(name)
        database = dj_database_url.parse(environment["DATABASE_URL"])
        mysql = compose.environment("mysql")
        assert database["ENGINE"] == "django.db.backends.mysql"
        assert (database["HOST"], database["PORT"]) == ("mysql", 3306)
        assert (database["NAME"], database["USER"]) == (mysql["MYSQL_DATABASE"], mysql["MYSQL_USER"])
        assert urlsplit(environment["REDIS_URL"]).hostname == "redis"


def test_app_environment_names_are_ones_the_app_reads(compose):
    known = names_read_from_environment()
    for name in [*compose.app_services, "migrate"]:
        assert set(compose.environment(name)) <= known, name


def test_allowed_hosts_cover_every_name_the_app_is_reached_by(compose):
    for name in compose.app_services:
        allowed = compose.environment(name)["ALLOWED_HOSTS"].split(",")
        # nginx: the attack from inside the network; app-N: Prometheus; 127.0.0.1: the healthcheck.
        assert {"nginx", "127.0.0.1", *compose.app_services} <= set(allowed)


def test_gunicorn_trusts_forwarded_headers_from_nginx_only(compose):
    network = ipaddress.ip_network(compose.data["networks"]["default"]["ipam"]["config"][0]["subnet"])
    proxy_address = compose.services["nginx"]["networks"]["default"]["ipv4_address"]
    assert ipaddress.ip_address(proxy_address) in network
    for name in compose.app_services:
        assert compose.environment(name)["FORWARDED_ALLOW_IPS"] == proxy_address


def test_database_connections_fit_mysql_max_connections(compose, gunicorn_settings):
    (flag,) = [arg for arg in compose.services["mysql"]["command"] if arg.startswith("--max-connections=")]
    maximum = int(flag.split("=")[1])
    per_instance = [
        int(compose.environment(name)["GUNICORN_WORKERS"]) * int(compose.environment(name)["GUNICORN_THREADS"])
        for name in compose.app_services
    ]
    assert sum(per_instance) + cluster.RESERVED_CONNECTIONS <= maximum
    # The compose defaults are gunicorn.conf.py's.
    assert compose.environment("app-1")["GUNICORN_WORKERS"] == str(gunicorn_settings["workers"])
    assert compose.environment("app-1")["GUNICORN_THREADS"] == str(gunicorn_settings["threads"])


def test_apps_stop_gracefully_within_the_grace_period(compose, gunicorn_settings):
    for name in compose.app_services:
        grace = nginx.seconds(compose.services[name]["stop_grace_period"])
        assert grace > gunicorn_settings["graceful_timeout"]


def test_prometheus_multiprocess_directory_is_per_instance_memory(compose):
    for name in compose.app_services:
        directory = compose.environment(name)["PROMETHEUS_MULTIPROC_DIR"]
        assert any(mount.split(":")[0] == directory for mount in compose.services[name]["tmpfs"])


def test_no_secret_is_committed_and_every_variable_is_documented():
    text = (REPO / "docker-compose.yml").read_text()
    used = variables(text)
    for secret in SECRETS:
        assert used[secret] == ":?", f"{secret} must be required from .env, not defaulted"
    example = (REPO / ".env.example").read_text()
    documented = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", example, flags=re.MULTILINE))
    assert set(used) <= set(documented)
    assert all(documented[secret] == "" for secret in SECRETS)
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in (REPO / ".dockerignore").read_text().splitlines()
    # Nothing that looks like a literal password or key in compose itself.
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET)\w*:\s*\S", line):
            assert "${" in line, line


def test_interpolation_reads_defaults_and_marks_required_values():
    assert interpolate("${A:-x}/${B:?why}/${C}") == "x/<B>/<C>"


def test_dockerfile_is_multi_stage_with_build_tools_only_in_the_build_stage(stages):
    assert list(stages) == ["build", "nginx", "app"]
    build_tools = ("gcc", "pkg-config", "libmariadb-dev")
    assert all(tool in stages["build"].text() for tool in build_tools)
    for name in ("nginx", "app"):
        assert not any(tool in stages[name].text() for tool in build_tools), name
    assert "slim" in stages["build"].base and stages["app"].base == stages["build"].base
    assert "COPY --from=build /opt/venv /opt/venv" in stages["app"].text()


def test_app_image_runs_gunicorn_as_a_non_root_user(stages):
    app = stages["app"]
    (user,) = app.all("USER")
    assert user not in {"root", "0"}
    (command,) = app.all("CMD")
    assert command.startswith('["gunicorn", "--config", "/app/gunicorn.conf.py"')


def test_static_files_are_collected_at_build_and_served_by_nginx_from_the_same_place(stages, nginx_config):
    (collect,) = [run for run in stages["build"].all("RUN") if "collectstatic" in run]
    static_root = re.search(r"STATIC_ROOT=(\S+)", collect)[1]
    alias = nginx.one(nginx.server(nginx_config), "location", "server", nginx.STATIC_LOCATION)["block"]
    assert nginx.one(alias, "alias", "location /static/")["args"] == [f"{static_root}/"]
    assert f"COPY --from=build {static_root} {static_root}" in stages["nginx"].text()
    assert "COPY nginx.conf /etc/nginx/nginx.conf" in stages["nginx"].text()
    assert f"STATIC_ROOT={static_root}" in stages["app"].text()


def test_compose_builds_the_dockerfile_targets(compose, stages):
    for name, service in compose.services.items():
        if "build" in service:
            assert service["build"]["target"] in stages, name
