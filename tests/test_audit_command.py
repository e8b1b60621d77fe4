"""`manage.py audit`: exit status 0 when the books balance, 1 with the discrepancies otherwise."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ledger import services
from ledger.models import Account


@pytest.mark.django_db
def test_audit_passes_when_every_balance_matches(make_account):
    account = make_account(balance=500)
    services.deduct(account_id=account.pk, amount=200, strategy="atomic")
    out = StringIO()
    call_command("audit", stdout=out)
    assert "OK" in out.getvalue() and "1 accounts checked" in out.getvalue()


@pytest.mark.django_db
def test_audit_fails_and_reports_a_tampered_balance(make_account):
    good, bad = make_account(balance=500), make_account(balance=500)
    Account.objects.filter(pk=bad.pk).update(balance=700)
    out = StringIO()
    with pytest.raises(CommandError, match="1 of 2 accounts do not balance") as failed:
        call_command("audit", "--json", stdout=out)
    assert failed.value.returncode == 1
    report = json.loads(out.getvalue())
    assert report["ok"] is False and report["accounts_checked"] == 2
    [line] = report["discrepancies"]
    assert (line["account_id"], line["expected_balance"], line["balance"], line["balance_loss"]) == (
        bad.pk, 500, 700, -200,
    )  # fmt: skip
    call_command("audit", "--account", str(good.pk), stdout=StringIO())  # the honest one alone passes
