"""The raw-SQL ceiling: the statements each correct strategy sends, without Django.

1. `capture(strategy)` runs real deductions through `ledger.services.deduct` and records what
   reached the database, in order: every statement (its SQL text and parameters, from Django's
   execute wrappers) and the transaction framing (BEGIN/COMMIT/ROLLBACK, from Django's query log).
2. `RawTarget` replays those captured SQL texts on plain mysqlclient connections (one per worker
   thread, configured like Django's: READ COMMITTED, FOUND_ROWS, the lock wait timeout), with
   START TRANSACTION/COMMIT where Django opens a transaction, and only the Python a deduction
   cannot do without (compute the new balance, build the attempt row). It plugs into the attack
   engine like any target, so the ceiling and the app are measured by the same workers, barrier,
   clock and percentiles.
3. `verify(strategy, program)` proves the replay sends what Django sent: one deduction through
   Django and one through the replay, each on a fresh account with the same balance, must produce
   the same statements with the same parameters (ids, times, request ids and the event log
   masked), in the same transaction framing, on the succeeded and the refused path.

`redis-lock` takes the same redis-py lock (`strategies.redis_lock.WakeUpLock`, a plain redis-py
client, no django-redis) around its statements. The balance cache's publish after commit (one Redis
round trip per success in the app) is not SQL and is not in the ceiling: it counts against the app.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

import MySQLdb
import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from MySQLdb.constants import CLIENT

from ledger import services
from ledger.attack.targets import Sample
from ledger.errors import InsufficientFunds, LockTimeout, OptimisticConflict
from ledger.models import Account, Outcome
from strategies.redis_lock import WakeUpLock, lock_key

if TYPE_CHECKING:
    from ledger.attack.engine import AttackPlan

BEGIN, COMMIT, ROLLBACK, EXECUTE = "BEGIN", "COMMIT", "ROLLBACK", "EXECUTE"
# Strategies with a replay: the correct ones. no-lock and mutex lose updates by design; a ceiling
# for statements that lose money would measure nothing worth reaching.
STRATEGIES = ("atomic", "optimistic", "pessimistic", "redis-lock")
INSTANCE_ID = "bench-ceiling"


class Step(NamedTuple):
    kind: str  # BEGIN, COMMIT, ROLLBACK or EXECUTE
    sql: str = ""
    params: tuple = ()


@dataclass
class Program:
    """What one strategy sent for one deduction, per path (succeeded, insufficient_funds)."""

    strategy: str
    paths: dict[str, list[Step]]

    def statements(self, path: str) -> list[str]:
        return [step.sql for step in self.paths[path] if step.kind == EXECUTE]


@contextmanager
def recording() -> Iterator[list[Step]]:
    """Record every statement and transaction boundary this thread's connection sends."""
    executed: list[tuple[str, tuple]] = []

    def wrapper(execute, sql, params, many, context):
        executed.append((sql, tuple(params or ())))
        return execute(sql, params, many, context)

    steps: list[Step] = []
    with CaptureQueriesContext(connection) as logged, connection.execute_wrapper(wrapper):
        yield steps
    # The query log holds both, in order; the framing entries are Django's own words for them.
    statements = iter(executed)
    for entry in logged.captured_queries:
        if entry["sql"] in (BEGIN, COMMIT, ROLLBACK):
            steps.append(Step(entry["sql"]))
        else:
            steps.append(Step(EXECUTE, *next(statements)))


def capture(strategy: str, *, amount: int = 100) -> Program:
    """One succeeded and one refused deduction through the service, as the database saw them."""
    rich = services.open_account(name=f"bench-capture-{uuid.uuid4().hex[:12]}", balance=amount * 10)
    broke = services.open_account(name=f"bench-capture-{uuid.uuid4().hex[:12]}", balance=0)
    paths = {}
    for path, account in ((Outcome.SUCCEEDED, rich), (Outcome.INSUFFICIENT_FUNDS, broke)):
        with recording() as steps:
            attempt = services.deduct(account_id=account.pk, amount=amount, strategy=strategy)
        if attempt.outcome != path:
            raise RuntimeError(f"{strategy}: capturing the {path} path gave {attempt.outcome}")
        paths[path.value] = steps
    return Program(strategy=strategy, paths=paths)


def insert_columns(sql: str) -> list[str]:
    """Column names of an `INSERT INTO t (a, b, …) VALUES …` statement."""
    names = sql[sql.index("(") + 1 : sql.index(")")]
    return [name.strip().strip('`"') for name in names.split(",")]


def _now() -> str:
    # What Django sends for a DateTimeField on MySQL (naive UTC, as text).
    return str(datetime.now(UTC).replace(tzinfo=None))


class RawConnection:
    """One mysqlclient connection, configured like Django's; optionally records what it sends."""

    def __init__(self, log: list[Step] | None = None) -> None:
        database = settings.DATABASES["default"]
        options = database.get("OPTIONS", {})
        self.db = MySQLdb.connect(
            host=database["HOST"] or "127.0.0.1",
            port=int(database["PORT"] or 3306),
            user=database["USER"],
            password=database["PASSWORD"],
            database=database["NAME"],
            charset=options.get("charset", "utf8mb4"),
            client_flag=CLIENT.FOUND_ROWS,  # Django's: UPDATE's rowcount is the rows matched
            autocommit=True,
        )
        self.cursor = self.db.cursor()
        isolation = options.get("isolation_level", "read committed").upper()
        self.cursor.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation}")
        if options.get("init_command"):
            self.cursor.execute(options["init_command"])
        self.log = log

    def begin(self) -> None:
        self._log(Step(BEGIN))
        self.cursor.execute("START TRANSACTION")

    def commit(self) -> None:
        self._log(Step(COMMIT))
        self.db.commit()

    def rollback(self) -> None:
        self._log(Step(ROLLBACK))
        self.db.rollback()

    def execute(self, sql: str, params: list | tuple) -> int:
        self._log(Step(EXECUTE, sql, tuple(params)))
        return self.cursor.execute(sql, params)

    def fetchone(self) -> tuple:
        return self.cursor.fetchone()

    def close(self) -> None:
        self.db.close()

    def _log(self, step: Step) -> None:
        if self.log is not None:
            self.log.append(step)


@dataclass
class _Deduction:
    """One replayed deduction: what the attempt row needs, filled in as the replay goes."""

    account_id: int
    amount: int
    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=_now)
    retries: int = 0
    lock_wait_s: float | None = None
    lock_acquired_at: str | None = None
    attack_run_id: int | None = None


class RawTarget:
    """The ceiling as an attack target: each deduction replays the strategy's captured statements."""

    label = "raw-sql-ceiling"

    def __init__(self, program: Program) -> None:
        self.program = program
        self.strategy = program.strategy
        replays: dict[str, Callable[[RawConnection, _Deduction], Sample]] = {
            "atomic": self._atomic, "optimistic": self._optimistic, "pessimistic": self._pessimistic,
            "redis-lock": self._redis_lock,
        }  # fmt: skip
        self._replay = replays[self.strategy]
        success, refused = program.paths[Outcome.SUCCEEDED.value], program.paths[Outcome.INSUFFICIENT_FUNDS.value]
        executed = [step for step in success if step.kind == EXECUTE]
        insert = executed[-1]  # every success path ends with the attempt's INSERT
        self.columns = insert_columns(insert.sql)
        # The attempt rows Django wrote, as templates: same payload sizes (events, instance id, …).
        self.rows = {
            Outcome.SUCCEEDED.value: dict(zip(self.columns, insert.params, strict=True)),
            Outcome.INSUFFICIENT_FUNDS.value: dict(
                zip(self.columns, [s for s in refused if s.kind == EXECUTE][-1].params, strict=True)
            ),
        }
        self.sql = {"insert": insert.sql}
        self.sql.update(self._roles(success, refused))
        self._local = threading.local()
        self._lock_keys: dict[int, str] = {}
        self._redis_pid: int | None = None
        self._redis: redis.Redis | None = None

    def _roles(self, success: list[Step], refused: list[Step]) -> dict[str, str]:
        """The strategy's statements by the role the replay gives them (positions in the capture)."""
        ok = [step.sql for step in success if step.kind == EXECUTE]
        no = [step.sql for step in refused if step.kind == EXECUTE]
        if self.strategy == "atomic":  # UPDATE … WHERE balance >= x, SELECT, INSERT | UPDATE, SELECT, INSERT
            return {"deduct": ok[0], "read": ok[1], "read_after_refusal": no[1]}
        # pessimistic: SELECT … FOR UPDATE, UPDATE, INSERT; optimistic and redis-lock: SELECT,
        # UPDATE … WHERE version = v, INSERT
        return {"read": ok[0], "write": ok[1]}

    # The engine's Target interface.

    def check(self, plan: AttackPlan) -> None:
        if plan.strategy != self.strategy:
            raise ValueError(f"this ceiling replays {self.strategy}, not {plan.strategy}")

    def prepare(self, plan: AttackPlan) -> tuple[int, int]:
        account = services.open_account(name=f"bench-ceiling-{uuid.uuid4().hex[:12]}", balance=plan.balance)
        self._lock_keys[account.pk] = cache.make_key(lock_key(account.pk))
        return account.pk, account.balance

    def local_account_id(self, account_id: int) -> int | None:
        return account_id

    def fire(self, *, account_id: int, plan: AttackPlan, run_id: int | None) -> Sample:
        raw = getattr(self._local, "connection", None)
        if raw is None:
            raw = self._local.connection = RawConnection()
        return self._replay(raw, _Deduction(account_id=account_id, amount=plan.amount, attack_run_id=run_id))

    def read(self, *, account_id: int) -> Sample:
        raise NotImplementedError("the ceiling replays deductions only")

    def worker_finished(self) -> None:
        raw = getattr(self._local, "connection", None)
        if raw is not None:
            raw.close()
            self._local.connection = None

    def balance(self, account_id: int) -> int:
        return Account.objects.values_list("balance", flat=True).get(pk=account_id)

    def expected_balance(self, run_id: int, initial_balance: int, samples: list[Sample], plan: AttackPlan) -> int:
        return initial_balance - plan.amount * sum(1 for s in samples if s.outcome == Outcome.SUCCEEDED)

    # The replays.

    def _record(self, raw: RawConnection, d: _Deduction, outcome: str, **values) -> Sample:
        """INSERT the attempt row (Django's captured row for this outcome, with this deduction's values)."""
        row = dict(self.rows[outcome if outcome in self.rows else Outcome.SUCCEEDED.value])
        finished = _now()
        row.update(
            account_id=d.account_id, amount=d.amount, outcome=outcome, retries=d.retries,
            lock_wait_us=None if d.lock_wait_s is None else int(d.lock_wait_s * 1_000_000),
            duration_us=int((time.perf_counter() - d.started) * 1_000_000), started_at=d.started_at,
            finished_at=finished, instance_id=INSTANCE_ID, request_id=uuid.uuid4().hex, attack_run_id=d.attack_run_id,
            balance_before=None, balance_after=None, version_before=None, version_after=None,
            read_at=None, written_at=None, lock_acquired_at=d.lock_acquired_at,
        )  # fmt: skip
        row.update(values)
        row["error"] = self._error(outcome, d, row)
        if outcome == Outcome.SUCCEEDED:
            row["written_at"] = finished
        raw.execute(self.sql["insert"], [row[column] for column in self.columns])
        latency = time.perf_counter() - d.started
        version = values.get("version_after") if outcome == Outcome.SUCCEEDED else None
        return Sample(outcome, latency, d.retries, d.lock_wait_s, version)

    def _error(self, outcome: str, d: _Deduction, row: dict) -> str:
        """The attempt's error text, as the service writes it (the refusal's message)."""
        if outcome == Outcome.INSUFFICIENT_FUNDS:
            return str(InsufficientFunds(balance=row["balance_before"], amount=d.amount))
        if outcome == Outcome.CONFLICT and self.strategy == "optimistic":
            tries = settings.LEDGER_OPTIMISTIC_MAX_RETRIES + 1
            return str(OptimisticConflict(f"version changed under every one of {tries} tries"))
        if outcome == Outcome.CONFLICT:
            return str(OptimisticConflict("the version changed while the redis lock was believed held"))
        if outcome == Outcome.LOCK_TIMEOUT:
            return str(LockTimeout(f"redis lock not acquired within {settings.LEDGER_LOCK_WAIT_S} s"))
        return ""

    def _atomic(self, raw: RawConnection, d: _Deduction) -> Sample:
        raw.begin()
        if raw.execute(self.sql["deduct"], [d.amount, _now(), d.account_id, d.amount]) == 1:
            raw.execute(self.sql["read"], [d.account_id])
            after, version = raw.fetchone()
            sample = self._record(
                raw, d, Outcome.SUCCEEDED, balance_before=after + d.amount, balance_after=after,
                version_before=version - 1, version_after=version,
            )  # fmt: skip
            raw.commit()
            return sample
        raw.commit()
        raw.execute(self.sql["read_after_refusal"], [d.account_id])
        balance, version = raw.fetchone()
        return self._record(
            raw, d, Outcome.INSUFFICIENT_FUNDS, balance_before=balance, version_before=version, read_at=_now()
        )

    def _pessimistic(self, raw: RawConnection, d: _Deduction) -> Sample:
        waited_from = time.perf_counter()
        raw.begin()
        raw.execute(self.sql["read"], [d.account_id])
        balance, version = raw.fetchone()
        d.lock_wait_s, d.lock_acquired_at = time.perf_counter() - waited_from, _now()
        if balance < d.amount:
            raw.rollback()
            return self._record(
                raw, d, Outcome.INSUFFICIENT_FUNDS, balance_before=balance, version_before=version, read_at=_now()
            )
        read_at = _now()
        raw.execute(self.sql["write"], [balance - d.amount, version + 1, _now(), d.account_id])
        sample = self._record(
            raw, d, Outcome.SUCCEEDED, balance_before=balance, balance_after=balance - d.amount,
            version_before=version, version_after=version + 1, read_at=read_at,
        )  # fmt: skip
        raw.commit()
        return sample

    def _compare_and_set(self, raw: RawConnection, d: _Deduction) -> tuple[str, dict]:
        """Read, check, and write if the version did not move. Returns the outcome and the attempt's
        values: recorded at once when succeeded (in the transaction), by the caller otherwise."""
        raw.execute(self.sql["read"], [d.account_id])
        balance, version = raw.fetchone()
        read_at = _now()
        if balance < d.amount:
            return Outcome.INSUFFICIENT_FUNDS, {
                "balance_before": balance,
                "version_before": version,
                "read_at": read_at,
            }
        raw.begin()
        after = balance - d.amount
        if raw.execute(self.sql["write"], [after, version + 1, _now(), d.account_id, version]) == 1:
            values = {"balance_before": balance, "balance_after": after, "version_before": version,
                      "version_after": version + 1, "read_at": read_at}  # fmt: skip
            sample = self._record(raw, d, Outcome.SUCCEEDED, **values)
            raw.commit()
            return Outcome.SUCCEEDED, {"sample": sample}
        raw.commit()
        return Outcome.CONFLICT, {"balance_before": balance, "version_before": version, "read_at": read_at}

    def _optimistic(self, raw: RawConnection, d: _Deduction) -> Sample:
        while True:
            outcome, values = self._compare_and_set(raw, d)
            if outcome == Outcome.SUCCEEDED:
                return values["sample"]
            if outcome == Outcome.INSUFFICIENT_FUNDS or d.retries >= settings.LEDGER_OPTIMISTIC_MAX_RETRIES:
                return self._record(raw, d, outcome, **values)
            d.retries += 1
            time.sleep(random.uniform(0, settings.LEDGER_OPTIMISTIC_BACKOFF_MAX_MS / 1000))

    def _redis_lock(self, raw: RawConnection, d: _Deduction) -> Sample:
        lock = WakeUpLock(
            self._redis_client(),
            self._lock_keys[d.account_id],
            timeout=settings.LEDGER_REDIS_LOCK_TTL_S,
            sleep=settings.LEDGER_REDIS_LOCK_RETRY_S,
            blocking_timeout=settings.LEDGER_LOCK_WAIT_S,
        )
        waited_from = time.perf_counter()
        if not lock.acquire():
            return self._record(raw, d, Outcome.LOCK_TIMEOUT)
        try:
            d.lock_wait_s, d.lock_acquired_at = time.perf_counter() - waited_from, _now()
            outcome, values = self._compare_and_set(raw, d)
        finally:
            lock.release()
        # Like the service: a refusal is recorded after the strategy (and its lock) is done.
        return values["sample"] if outcome == Outcome.SUCCEEDED else self._record(raw, d, outcome, **values)

    def _redis_client(self) -> redis.Redis:
        if self._redis_pid != os.getpid():  # one client (and pool) per process, created after fork
            self._redis = redis.Redis.from_url(settings.REDIS_URL)
            self._redis_pid = os.getpid()
        return self._redis


# Verification.

# Attempt columns that are measurements of one particular run, not what the strategy decided.
MEASURED = {"duration_us", "lock_wait_us", "events", "instance_id"}


def _same_value(ours: object, theirs: object, ids: tuple[int, int]) -> bool:
    """Whether two parameters of the same statement agree, times and request ids aside."""
    if ours == ids[0] or theirs == ids[1]:
        return (ours, theirs) == ids  # each its own account, never the other's
    if ours == theirs:
        return True
    return isinstance(ours, str) and isinstance(theirs, str) and _time_or_id(ours) and _time_or_id(theirs)


def _time_or_id(value: str) -> bool:
    is_time = len(value) >= 19 and value[4] == "-" and value[10] == " "
    is_id = len(value) == 32 and all(c in "0123456789abcdef" for c in value)
    return is_time or is_id


def differences(ours: list[Step], theirs: list[Step], *, ids: tuple[int, int], columns: list[str]) -> list[str]:
    """How two recorded deductions differ: framing, statements, parameters (one line per difference).

    `ids`: (our account id, their account id), which play the same part in both."""
    if [(s.kind, s.sql) for s in ours] != [(s.kind, s.sql) for s in theirs]:
        return [f"statements: {[(s.kind, s.sql) for s in ours]} != {[(s.kind, s.sql) for s in theirs]}"]
    found = []
    for number, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        names = columns if mine.sql.startswith("INSERT") else [str(n) for n in range(len(mine.params))]
        if len(mine.params) != len(other.params):
            found.append(f"step {number}: {len(mine.params)} parameters != {len(other.params)}")
            continue
        for name, a, b in zip(names, mine.params, other.params, strict=True):
            if name not in MEASURED and not _same_value(a, b, ids):
                found.append(f"step {number} ({mine.sql[:40]}…) parameter {name}: {a!r} != {b!r}")
    return found


def verify(program: Program, *, amount: int = 7_919) -> list[str]:
    """How the replay differs from Django for one fresh deduction per path (succeeded, refused):
    an empty list when it sends exactly the statements, parameters and framing Django sends.
    (An odd amount, so that no parameter equals an account id by chance.)"""
    target = RawTarget(program)
    found = []
    for path, balance in ((Outcome.SUCCEEDED, amount * 10), (Outcome.INSUFFICIENT_FUNDS, 0)):
        django_account = services.open_account(name=f"bench-verify-{uuid.uuid4().hex[:12]}", balance=balance)
        raw_account = services.open_account(name=f"bench-verify-{uuid.uuid4().hex[:12]}", balance=balance)
        target._lock_keys[raw_account.pk] = cache.make_key(lock_key(raw_account.pk))
        with recording() as django_steps:
            services.deduct(account_id=django_account.pk, amount=amount, strategy=program.strategy)
        log: list[Step] = []
        raw = RawConnection(log=log)
        try:
            target._replay(raw, _Deduction(account_id=raw_account.pk, amount=amount))
        finally:
            raw.close()
        ids = (django_account.pk, raw_account.pk)
        found += [
            f"{program.strategy} {path.value}: {line}"
            for line in differences(django_steps, log, ids=ids, columns=target.columns)
        ]
    return found
