"""`attack --url`: the same engine, report and table over HTTP, against a live server."""

from __future__ import annotations

import http.server
import json
import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ledger.api.breaker import database_breaker
from ledger.api.tokens import ensure_token
from ledger.attack.engine import AttackPlan
from ledger.attack.http import HttpTarget
from ledger.attack.report import REPORT_KEYS
from ledger.models import Account, AttackRun
from strategies import registry
from tests.api.conftest import user_with_a_long_window

CORRECT = [s.name for s in registry.all_strategies() if s.safe_across_processes]


def attack_json(*args: str) -> list[dict]:
    out = StringIO()
    call_command("attack", *args, "--json", stdout=out)
    return json.loads(out.getvalue())["runs"]


@pytest.mark.django_db(transaction=True)
def test_every_strategy_over_http_and_no_loss_for_the_correct_ones(live_server):
    runs = {
        run["strategy"]: run
        for run in attack_json("--url", live_server.url, "--mode", "all", "--requests", "60", "--concurrency", "6",
                               "--balance", "5000")
    }  # fmt: skip
    assert list(runs) == registry.names()
    for name, run in runs.items():
        assert set(run) >= set(REPORT_KEYS)
        assert run["target"] == live_server.url
        assert run["requests"] == 60 and (run["rate_limited"], run["unavailable"], run["error"]) == (0, 0, 0)
        # The client's view: what it saw succeed (201s) against the balance the API reports.
        assert run["expected_balance"] == 5_000 - 100 * run["succeeded"]
        if name in CORRECT:
            assert run["balance_loss"] == 0, name
            # The API reads the balance through the cache. A lost update commits one version twice
            # with two balances and the cache keeps the first (README "Cached balance reads",
            # limits): only for the correct strategies must it equal the row.
            assert run["actual_balance"] == Account.objects.get(pk=run["account_id"]).balance
    # No --token: the demo token was accepted, so the server shares this database.
    assert AttackRun.objects.get(pk=runs["atomic"]["run_id"]).account_id == runs["atomic"]["account_id"]


@pytest.mark.django_db(transaction=True)
def test_reads_over_http_carry_their_version_and_source_and_are_never_stale(live_server):
    [run] = attack_json(
        "--url", live_server.url, "--mode", "atomic", "--requests", "100", "--concurrency", "4",
        "--read-ratio", "0.8", "--balance", "100000",
    )  # fmt: skip
    assert run["reads"] == 80 and run["succeeded"] == 20
    assert run["stale_reads"] == 0 and run["balance_loss"] == 0
    assert run["cache_hit_rate"] > 0  # reads after the first fill come from the cache, over HTTP too


@pytest.mark.django_db(transaction=True)
def test_the_table_shows_the_http_columns(live_server):
    out = StringIO()
    call_command("attack", "--url", live_server.url, "--mode", "atomic", "--requests", "10", "--concurrency", "2",
                 stdout=out)  # fmt: skip
    table = out.getvalue()
    assert "rate limited (429)" in table and "unavailable (503)" in table and "balance loss" in table
    assert live_server.url in table


@pytest.mark.django_db(transaction=True)
def test_429_answers_are_counted_and_not_taken_for_successes(live_server, settings):
    settings.RATE_LIMIT_WRITES = "6/h"  # one of them opens the attacked account
    token = ensure_token(username=user_with_a_long_window("6/h"))
    [run] = attack_json("--url", live_server.url, "--token", token, "--mode", "atomic", "--requests", "20",
                        "--concurrency", "4", "--balance", "10000")  # fmt: skip
    assert (run["succeeded"], run["rate_limited"]) == (5, 15)
    assert run["expected_balance"] == run["actual_balance"] == 9_500


@pytest.mark.django_db(transaction=True)
def test_503_answers_are_counted_while_the_breaker_is_open(live_server):
    breaker = database_breaker()
    breaker._breaker.open()
    [run] = attack_json("--url", live_server.url, "--mode", "atomic", "--requests", "12", "--concurrency", "3")
    assert (run["succeeded"], run["unavailable"]) == (0, 12)
    assert run["expected_balance"] == run["actual_balance"] == run["initial_balance"]


@pytest.mark.django_db(transaction=True)
def test_a_wrong_token_is_one_clear_error(live_server):
    with pytest.raises(CommandError, match=r"--token: .* answered GET /api/strategies/ with 401"):
        call_command("attack", "--url", live_server.url, "--token", "not-a-token", "--mode", "atomic")


@pytest.mark.django_db(transaction=True)
def test_an_unknown_remote_strategy_lists_the_servers_names(live_server):
    with pytest.raises(CommandError, match="--mode: unknown strategy 'yolo'; valid names: mutex"):
        call_command("attack", "--url", live_server.url, "--mode", "yolo")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def stub_server():
    """A real HTTP server on a free loopback port, answering with the handler class given."""
    servers = []

    def start(handler: type[http.server.BaseHTTPRequestHandler]) -> str:
        server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _RefusesEveryToken(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"error": "authentication_failed", "detail": "Invalid token."}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.django_db
def test_without_a_token_a_server_on_another_database_is_refused_clearly(stub_server):
    url = stub_server(_RefusesEveryToken)
    with pytest.raises(CommandError, match=r"--token: required: .* refused this project's demo token"):
        call_command("attack", "--url", url, "--mode", "atomic")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://127.0.0.1:1"], "--url: cannot reach http://127.0.0.1:1"),
        (["--url", "ftp://example"], "--url: must be an http:// or https:// URL"),
        (["--url", "http://me:secret@127.0.0.1:1"], "--url: must not contain credentials"),
        (["--token", "abc"], "--token: only applies with --url"),
    ],
)
def test_bad_url_options_are_one_clear_error(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("attack", *args, "--mode", "atomic")


class _ClosesAfterEveryAnswer(http.server.BaseHTTPRequestHandler):
    """Answers a deduction, then drops the connection without saying so (as an idle
    keep-alive timeout would)."""

    protocol_version = "HTTP/1.1"
    requests: list[str] = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append(self.headers["Idempotency-Key"])
        body = b'{"outcome": "succeeded", "retries": 0, "lock_wait_ms": null}'
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_dropped_keep_alive_connection_is_resent_once_on_a_new_one(stub_server):
    target = HttpTarget(stub_server(_ClosesAfterEveryAnswer), token="t")
    plan = AttackPlan(strategy="atomic")
    samples = [target.fire(account_id=1, plan=plan, run_id=1) for _ in range(3)]
    target.worker_finished()
    assert [s.outcome for s in samples] == ["succeeded"] * 3
    assert len(set(_ClosesAfterEveryAnswer.requests)) == 3  # each deduction arrived exactly once


@pytest.mark.django_db(transaction=True)
def test_each_worker_keeps_one_connection_alive(live_server, make_account):
    target = HttpTarget(live_server.url, token=ensure_token())
    account = make_account(balance=1_000)
    plan = AttackPlan(strategy="atomic")
    target.fire(account_id=account.pk, plan=plan, run_id=1)
    socket = target._local.connection.sock
    for _ in range(5):
        assert target.fire(account_id=account.pk, plan=plan, run_id=1).outcome == "succeeded"
        assert target._local.connection.sock is socket
    target.worker_finished()
    assert Account.objects.get(pk=account.pk).balance == 400


class _GatewayErrorsThenBadRequest(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers = [(502, b"<html>Bad Gateway</html>"), (400, b'{"error": "invalid", "detail": "amount: no"}')]

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = type(self).answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_server_failures_are_counted_but_client_mistakes_stop_the_attack(stub_server):
    from ledger.errors import InvalidRequest

    target = HttpTarget(stub_server(_GatewayErrorsThenBadRequest), token="t")
    plan = AttackPlan(strategy="atomic")
    assert target.fire(account_id=1, plan=plan, run_id=1).outcome == "error"
    with pytest.raises(InvalidRequest, match="answered POST deductions with 400: amount: no"):
        target.fire(account_id=1, plan=plan, run_id=1)
    target.worker_finished()
