"""Configuration: production checks, and the embedded Redis shared by every process."""

from __future__ import annotations

import os
import subprocess
import sys

import redis
from django.conf import settings

from project import embedded_redis


def test_check_deploy_is_clean_with_production_environment(tmp_path):
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": "x7!kP2#vL9qR4@mZ8wN3$tY6^bH1&cJ5*fD0(gS-" + "a" * 20,
        "ALLOWED_HOSTS": "ledger.example.com",
        "HTTPS": "true",
        "VAR_DIR": str(tmp_path),
    }
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        embedded_redis.stop(tmp_path)  # without REDIS_URL the check started one under VAR_DIR
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_local_secret_key_is_generated_once_and_kept_private():
    key_file = settings.VAR_DIR / "secret_key"
    if os.environ.get("SECRET_KEY"):
        return
    assert key_file.read_text().strip() == settings.SECRET_KEY
    assert key_file.stat().st_mode & 0o077 == 0


def test_embedded_redis_is_one_server_shared_by_every_process(tmp_path):
    var_dir = tmp_path / "var"
    url = embedded_redis.ensure_running(var_dir)
    try:
        assert url == f"unix://{var_dir}/redis.sock?db=0"
        redis.Redis.from_url(url).set("greeting", "hello")
        # Another process asks for the server: it must find the same one, not start its own.
        script = (
            "import sys, redis; from pathlib import Path; from project import embedded_redis; "
            "print(redis.Redis.from_url(embedded_redis.ensure_running(Path(sys.argv[1]))).get('greeting').decode())"
        )
        other = subprocess.run(
            [sys.executable, "-c", script, str(var_dir)],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.stdout.strip() == "hello", other.stderr
    finally:
        assert embedded_redis.stop(var_dir)
    assert not embedded_redis.is_running(var_dir)
