"""/api/accounts/{id}/balance/: the cheap read path, through ledger.selectors.balance."""

from __future__ import annotations

from ledger import selectors, services


def test_balance_returns_balance_version_and_source(api, make_account):
    account = make_account(balance=1_000)
    services.deduct(account_id=account.pk, amount=300, strategy="atomic")
    response = api.get(f"/api/accounts/{account.pk}/balance/")
    assert response.status_code == 200
    assert response.json() == {"account_id": account.pk, "balance": 700, "version": 1, "source": "database"}


def test_balance_is_read_through_the_selector(api, make_account, monkeypatch):
    account = make_account(balance=1_000)
    reads = []

    def spy(*, account_id):
        reads.append(account_id)
        return selectors.BalanceRead(account_id=account_id, balance=1, version=2, source="cache")

    monkeypatch.setattr(selectors, "balance", spy)
    assert api.get(f"/api/accounts/{account.pk}/balance/").json()["source"] == "cache"
    assert reads == [account.pk]


def test_balance_of_an_unknown_account_is_404(api):
    response = api.get("/api/accounts/424242/balance/")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "account 424242 does not exist"}
