"""/api/strategies/: what a client may name in a deduction."""

from __future__ import annotations

from strategies import registry


def test_lists_every_registered_strategy_with_its_description_and_safety(api, settings):
    settings.LEDGER_DEFAULT_STRATEGY = "optimistic"
    listed = api.get("/api/strategies/").json()
    assert [s["name"] for s in listed] == registry.names()
    by_name = {s["name"]: s for s in listed}
    assert by_name["no-lock"]["safe_across_processes"] is False
    assert by_name["redis-lock"]["safe_across_processes"] is True
    assert by_name["atomic"]["description"] == registry.get("atomic").description()
    assert [s["name"] for s in listed if s["default"]] == ["optimistic"]
