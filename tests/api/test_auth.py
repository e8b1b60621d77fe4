"""Authentication: every API endpoint needs a token (or a session); tokens come from a command."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ledger.models import Account, DeductionAttempt

ENDPOINTS = [
    ("get", "/api/"),
    ("get", "/api/accounts/"),
    ("post", "/api/accounts/"),
    ("get", "/api/accounts/1/"),
    ("get", "/api/accounts/1/balance/"),
    ("post", "/api/accounts/1/deductions/"),
    ("get", "/api/attempts/"),
    ("get", "/api/attempts/1/"),
    ("get", "/api/runs/"),
    ("get", "/api/runs/1/"),
    ("get", "/api/strategies/"),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_every_endpoint_answers_401_without_a_token(anonymous, make_account, method, url):
    make_account(balance=1_000)
    response = getattr(anonymous, method)(url, {"name": "x", "balance": 1, "amount": 1}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json()["error"] == "not_authenticated"
    assert Account.objects.count() == 1 and not DeductionAttempt.objects.exists()


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_a_wrong_token_is_401(db, method, url):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    response = getattr(client, method)(url, {}, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_failed"


def test_a_session_serves_the_browsable_api_and_writes_need_its_csrf_token(django_user_model, make_account):
    user = django_user_model.objects.create_user("carol", password="a-long-password-1")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/api/accounts/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200 and b"Account List" in page.content
    account = make_account()
    refused = client.post(f"/api/accounts/{account.pk}/deductions/", {"amount": 1}, format="json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]


def test_the_admin_requires_staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("dave", password="a-long-password-1"))
    assert client.get("/admin/").status_code == 302


def test_schema_and_docs_are_public(anonymous, db):
    assert anonymous.get("/api/schema/").status_code == 200
    assert anonymous.get("/api/docs/").status_code == 200


def test_createapiuser_creates_a_token_user_once_and_can_rotate(db, capsys, django_user_model):
    call_command("createapiuser")
    token = capsys.readouterr().out.strip()
    assert Token.objects.get(key=token).user.username == "demo"
    assert not django_user_model.objects.get(username="demo").has_usable_password()
    call_command("createapiuser")
    assert capsys.readouterr().out.strip() == token
    call_command("createapiuser", "--rotate")
    rotated = capsys.readouterr().out.strip()
    assert rotated != token and Token.objects.get().key == rotated
    call_command("createapiuser", "--username", "eve")
    assert Token.objects.get(key=capsys.readouterr().out.strip()).user.username == "eve"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {rotated}")
    assert client.get("/api/strategies/").status_code == 200


def test_createapiuser_refuses_a_bad_username(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--username: Enter a valid username"):
        call_command("createapiuser", "--username", "no spaces please")
