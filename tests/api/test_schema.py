"""The OpenAPI schema validates; the docs page renders from locally served assets."""

from __future__ import annotations

import re
from io import StringIO

import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command


def test_schema_validates_without_warnings():
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = yaml.safe_load(out.getvalue())
    deduct = schema["paths"]["/api/accounts/{id}/deductions/"]["post"]
    assert {"201", "400", "402", "409", "415", "422", "423", "429", "500", "503"} <= set(deduct["responses"])
    assert "Idempotency-Key" in {p["name"] for p in deduct["parameters"]}
    assert {"/api/accounts/", "/api/accounts/{id}/balance/", "/api/attempts/", "/api/runs/{id}/"} <= set(
        schema["paths"]
    )


def test_docs_page_uses_only_local_assets(anonymous, db):
    page = anonymous.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r'"(/static/[^"]+)"', page)
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, page
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by this project"
        if asset.startswith("/static/"):
            assert finders.find(asset.removeprefix("/static/")), asset
    assert "swagger-ui-bundle.js" in page
    assert "/api/schema/" in page
