"""`attack --url`: the same engine, firing at the HTTP API of a running server."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from ledger.attack.targets import READ, Sample, fresh_account_name
from ledger.errors import AccountNotFound, InvalidRequest, UnknownStrategy
from ledger.models import AttackRun, Outcome

if TYPE_CHECKING:
    from ledger.attack.engine import AttackPlan

# Refused before the ledger saw the deduction: counted in their own columns.
TRANSPORT_OUTCOMES = {429: "rate_limited", 503: "unavailable"}
# A dropped keep-alive connection is re-sent once on a fresh one (see HttpTarget).
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Answer(NamedTuple):
    status: int
    body: dict
    latency_s: float


class HttpTarget:
    """Deductions as POST /api/accounts/{id}/deductions/ to a running server (gunicorn, nginx).

    Each worker thread keeps one keep-alive connection (the stdlib's http.client: one
    persistent connection per worker is all the pooling an attack needs, and it keeps the
    client's own CPU cost low on a machine it shares with the server). Every deduction
    carries a fresh Idempotency-Key, so one whose idle connection the server had closed can
    be re-sent on a new connection without any risk of deducting twice.

    Balance loss is the client's view: expected = initial − amount × the 201 answers this
    client received; actual = the balance read back through the API.
    """

    def __init__(self, url: str, *, token: str, shares_database: bool = False, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest("url", f"must be an http:// or https:// URL, not {url!r}")
        if parts.username or parts.password:
            raise InvalidRequest("url", "must not contain credentials (use --token)")
        if len(url) > AttackRun._meta.get_field("target").max_length:
            raise InvalidRequest("url", "is too long")
        self.label = url
        self.shares_database = shares_database
        self._connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._netloc = parts.netloc
        self._base = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        self._timeout_s = timeout_s
        self._local = threading.local()

    def strategy_names(self) -> list[str]:
        answer = self._expect(200, "GET", "/api/strategies/")
        return [strategy["name"] for strategy in answer.body.get("results", [])]

    def check(self, plan: AttackPlan) -> None:
        names = self.strategy_names()
        if plan.strategy not in names:
            raise UnknownStrategy(plan.strategy, names)

    def prepare(self, plan: AttackPlan) -> tuple[int, int]:
        if plan.account_id is not None:
            return plan.account_id, self.balance(plan.account_id)
        body = {"name": fresh_account_name(plan.strategy), "balance": plan.balance}
        account = self._expect(201, "POST", "/api/accounts/", body).body
        return account["id"], account["balance"]

    def local_account_id(self, account_id: int) -> int | None:
        return account_id if self.shares_database else None

    def fire(self, *, account_id: int, plan: AttackPlan, run_id: int) -> Sample:
        body = {"amount": plan.amount, "strategy": plan.strategy, "think_ms": plan.think_ms}
        try:
            answer = self._send(
                "POST", f"/api/accounts/{account_id}/deductions/", body, {"Idempotency-Key": uuid.uuid4().hex}
            )
        except OSError:
            # The server went away mid-attack: the client saw no answer at all.
            return Sample(Outcome.ERROR.value, 0.0, 0, None)
        if answer.status in TRANSPORT_OUTCOMES:
            return Sample(TRANSPORT_OUTCOMES[answer.status], answer.latency_s, 0, None)
        if "outcome" not in answer.body:
            if answer.status >= 500:  # a failing server or proxy (502, 504...): part of the measurement
                return Sample(Outcome.ERROR.value, answer.latency_s, 0, None)
            raise self._refused(answer, "POST deductions")  # a client mistake: stop, say which
        lock_wait_ms = answer.body.get("lock_wait_ms")
        succeeded = answer.body["outcome"] == Outcome.SUCCEEDED
        return Sample(
            answer.body["outcome"],
            answer.latency_s,
            answer.body.get("retries", 0),
            None if lock_wait_ms is None else lock_wait_ms / 1000,
            answer.body.get("version_after") if succeeded else None,
        )

    def read(self, *, account_id: int) -> Sample:
        """GET /api/accounts/{id}/balance/: the version and source the client saw."""
        try:
            answer = self._send("GET", f"/api/accounts/{account_id}/balance/")
        except OSError:
            return Sample(Outcome.ERROR.value, 0.0, 0, None)
        if answer.status in TRANSPORT_OUTCOMES:
            return Sample(TRANSPORT_OUTCOMES[answer.status], answer.latency_s, 0, None)
        if answer.status >= 500:
            return Sample(Outcome.ERROR.value, answer.latency_s, 0, None)
        if answer.status != 200:
            raise self._refused(answer, "GET balance")
        return Sample(READ, answer.latency_s, 0, None, answer.body["version"], answer.body["source"])

    def worker_finished(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def balance(self, account_id: int) -> int:
        answer = self._send("GET", f"/api/accounts/{account_id}/balance/", persistent=False)
        if answer.status == 404:
            raise AccountNotFound(account_id)
        if answer.status != 200:
            raise self._refused(answer, "GET balance")
        return answer.body["balance"]

    def expected_balance(self, run_id: int, initial_balance: int, samples: list[Sample], plan: AttackPlan) -> int:
        """Initial balance minus what this client saw succeed (its 201 answers)."""
        return initial_balance - plan.amount * sum(1 for s in samples if s.outcome == Outcome.SUCCEEDED)

    def _expect(self, status: int, method: str, path: str, body: dict | None = None) -> Answer:
        try:
            answer = self._send(method, path, body, persistent=False)
        except OSError as failure:
            raise InvalidRequest("url", f"cannot reach {self.label}: {failure}") from None
        if answer.status != status:
            raise self._refused(answer, f"{method} {path}")
        return answer

    def _refused(self, answer: Answer, what: str) -> InvalidRequest:
        field = "token" if answer.status in (401, 403) else "url"
        detail = answer.body.get("detail") or answer.body.get("error") or "no JSON body"
        return InvalidRequest(field, f"{self.label} answered {what} with {answer.status}: {detail}")

    def _send(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None, *, persistent: bool = True
    ) -> Answer:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {**self._headers, **(headers or {})}
        if payload is not None:
            all_headers["Content-Type"] = "application/json"
        connection = self._connection() if persistent else self._new_connection()
        # Only a connection that already carried a request can have been closed while idle.
        may_resend = getattr(connection, "zbl_used", False)
        try:
            while True:
                started = time.perf_counter()
                try:
                    connection.request(method, self._base + path, body=payload, headers=all_headers)
                    response = connection.getresponse()
                    raw = response.read()
                except _DROPPED:
                    if not may_resend:
                        raise
                    may_resend = False
                    connection.close()  # http.client reconnects on the next request
                    continue
                connection.zbl_used = True
                return Answer(response.status, _json(raw), time.perf_counter() - started)
        except BaseException:
            connection.close()
            raise
        finally:
            if not persistent:
                connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._new_connection()
        return connection

    def _new_connection(self) -> http.client.HTTPConnection:
        return self._connection_class(self._netloc, timeout=self._timeout_s)


def _json(raw: bytes) -> dict:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {"results": parsed}


def connect(url: str, *, token: str | None) -> HttpTarget:
    """An HttpTarget for `url`; with no token, this project's own demo token.

    A server that accepts the demo token reads it from this project's database, so it
    shares that database (its accounts can be linked to the saved runs); a server that
    refuses it does not, and then a token from that server is required.
    """
    from ledger.api.tokens import ensure_token

    if token:
        return HttpTarget(url, token=token)
    target = HttpTarget(url, token=ensure_token(), shares_database=True)
    try:
        target.strategy_names()
    except InvalidRequest as refused:
        if refused.field != "token":
            raise
        raise InvalidRequest(
            "token",
            f"required: {url} refused this project's demo token, so it does not use this database "
            "(run `manage.py createapiuser` there and pass its token)",
        ) from None
    return target
