"""The load engine behind `manage.py attack`, the admin's launcher and bench/.

It fires `requests` deductions at one account (or, with `accounts`, at N accounts picked at
random per request) with `concurrency` workers (threads) spread over `processes` OS processes,
all released together by one barrier, and turns what the workers saw into an `AttackRun`:
counts per outcome, TPS, latency percentiles and the balance loss (expected − actual balance,
summed over the accounts). With a `read_ratio`, that share of the requests are balance reads
instead, and every read is checked against what its worker had already seen committed on that
account (stale reads).

Processes are forked (not spawned) so that they inherit the configured database settings
(including pytest-django's test database) and each gets its own connections, its own pid
and therefore its own instance id: `--processes 2` behaves like two app instances.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import random
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connections
from django.utils import timezone

from ledger.attack.targets import READ, InProcessTarget, Sample, Target
from ledger.balance_cache import CACHE
from ledger.errors import InvalidRequest
from ledger.models import AttackRun, Outcome
from ledger.services import validate_amount, validate_think_ms

MAX_REQUESTS = 1_000_000
# Each worker holds one database connection: keep instances × workers under max_connections.
MAX_CONCURRENCY = 128
MAX_ACCOUNTS = 1_000
# The spread workload's account sequence is pseudo-random but the same for every run of a plan,
# so that strategies (and repeated runs) are compared on identical request streams.
ACCOUNT_SEED = 8

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class AttackPlan:
    strategy: str
    requests: int = 400
    concurrency: int = 16
    processes: int = 1
    amount: int = 100
    balance: int = 30_000
    think_ms: int = 0
    account_id: int | None = None
    read_ratio: float = 0.0  # share of the requests that are balance reads instead of deductions
    accounts: int = 1  # fresh accounts the requests are spread over (each request picks one at random)

    def validate(self) -> None:
        """Raise InvalidRequest naming the option (as spelled on the command line)."""

        def whole(field: str, value: object, low: int, high: int) -> None:
            if type(value) is not int or not low <= value <= high:
                raise InvalidRequest(field, f"must be an integer from {low} to {high}")

        whole("requests", self.requests, 1, MAX_REQUESTS)
        whole("concurrency", self.concurrency, 1, MAX_CONCURRENCY)
        whole("processes", self.processes, 1, self.concurrency)
        whole("accounts", self.accounts, 1, MAX_ACCOUNTS)
        if self.account_id is not None and self.accounts != 1:
            raise InvalidRequest("accounts", "cannot be combined with an existing account (--account)")
        validate_amount(self.amount)
        if self.account_id is None:
            whole("balance", self.balance, 0, 2**62)
        validate_think_ms(self.think_ms)
        ratio = self.read_ratio
        if type(ratio) not in (int, float) or not 0 <= ratio <= 1:
            raise InvalidRequest("read_ratio", "must be a number from 0 to 1")

    def is_read(self, index: int) -> bool:
        """Whether request number `index` is a read: reads are spread evenly over the run, and
        exactly floor(requests × read_ratio) of them (the sum telescopes)."""
        return math.floor((index + 1) * self.read_ratio) > math.floor(index * self.read_ratio)

    def account_choices(self) -> list[int] | None:
        """For each request, the index of the account it goes to; None with a single account."""
        if self.accounts == 1:
            return None
        rng = random.Random(ACCOUNT_SEED)
        return [rng.randrange(self.accounts) for _ in range(self.requests)]

    def as_parameters(self) -> dict:
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "processes": self.processes,
            "amount": self.amount,
            "balance": self.balance,
            "think_ms": self.think_ms,
            "read_ratio": self.read_ratio,
            "accounts": self.accounts,
        }


def run_attack(
    plan: AttackPlan, *, target: Target | None = None, on_progress: ProgressCallback | None = None
) -> AttackRun:
    """Run one attack and return its saved AttackRun (status finished, or failed + raise)."""
    target = target or InProcessTarget()
    plan.validate()
    target.check(plan)
    prepared = [target.prepare(plan) for _ in range(plan.accounts)]
    account_ids = [account_id for account_id, _ in prepared]
    initial_balance = sum(balance for _, balance in prepared)
    run = AttackRun.objects.create(
        strategy=plan.strategy,
        target=target.label,
        parameters=plan.as_parameters(),
        # A spread run has no one account: its attempts name theirs.
        account_id=target.local_account_id(account_ids[0]) if len(account_ids) == 1 else None,
        started_at=timezone.now(),
        requests=plan.requests,
        initial_balance=initial_balance,
    )
    try:
        samples, wall_s = fire(plan, target, account_ids, run_id=run.pk, on_progress=on_progress)
        actual = sum(target.balance(account_id) for account_id in account_ids)
        expected = target.expected_balance(run.pk, initial_balance, samples, plan)
    except BaseException as failure:
        run.status, run.failure, run.finished_at = AttackRun.Status.FAILED, repr(failure), timezone.now()
        run.save()
        raise
    summarise(run, samples, wall_s)
    run.expected_balance, run.actual_balance = expected, actual
    run.balance_loss = expected - actual
    run.status, run.finished_at = AttackRun.Status.FINISHED, timezone.now()
    run.save()
    return run


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


@dataclass
class ClientView:
    """What one client (a worker thread) has seen committed, to tell a stale read.

    Seen committed: the version_after of each of its own deductions that succeeded (they return
    after the commit) and the version returned by each of its earlier reads. A read is stale when
    it returns a version older than the highest of those.
    """

    seen: int | None = None

    def observe(self, sample: Sample) -> Sample:
        """The sample, marked stale if it is a read older than what this client saw before."""
        if sample.version is None:
            return sample
        stale = sample.outcome == READ and self.seen is not None and sample.version < self.seen
        self.seen = sample.version if self.seen is None else max(self.seen, sample.version)
        return sample._replace(stale=stale)


def summarise(run: AttackRun, samples: list[Sample], wall_s: float) -> None:
    """Set the run's counts, TPS and percentiles from the samples (the run is not saved)."""
    reads = [sample for sample in samples if sample.outcome == READ]
    deductions = [sample for sample in samples if sample.outcome != READ]
    counts = Counter(sample.outcome for sample in deductions)
    for outcome in Outcome:
        setattr(run, outcome.value, counts.get(outcome.value, 0))
    run.rate_limited = counts.get("rate_limited", 0)
    run.unavailable = counts.get("unavailable", 0)
    latencies = sorted(sample.latency_s * 1000 for sample in deductions)
    lock_waits = sorted(s.lock_wait_s * 1000 for s in deductions if s.lock_wait_s is not None)
    run.requests = len(samples)
    run.tps = len(samples) / wall_s if wall_s > 0 else None
    run.p50_ms, run.p99_ms = percentile(latencies, 0.50), percentile(latencies, 0.99)
    run.lock_wait_p99_ms = percentile(lock_waits, 0.99)
    run.retries = sum(sample.retries for sample in deductions)
    run.reads = len(reads)
    run.cache_hit_rate = sum(s.source == CACHE for s in reads) / len(reads) if reads else None
    run.stale_reads = sum(s.stale for s in reads)
    read_latencies = sorted(sample.latency_s * 1000 for sample in reads)
    run.read_p50_ms, run.read_p99_ms = percentile(read_latencies, 0.50), percentile(read_latencies, 0.99)


@dataclass
class _Shared:
    """Counters shared by every worker thread of every process (fork-inherited)."""

    total: int
    claimed: multiprocessing.sharedctypes.Synchronized
    done: multiprocessing.sharedctypes.Synchronized
    start: threading.Barrier

    def claim(self) -> int | None:
        """The number of the next request to send, or None when all are taken."""
        with self.claimed.get_lock():
            if self.claimed.value >= self.total:
                return None
            self.claimed.value += 1
            return self.claimed.value - 1

    def finished_one(self) -> None:
        with self.done.get_lock():
            self.done.value += 1


def fire(
    plan: AttackPlan,
    target: Target,
    account_ids: list[int],
    *,
    run_id: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[list[Sample], float]:
    """Send the plan's requests to the target's accounts; return the samples and the wall time
    from the first worker's start to the last one's end. Records nothing (bench/ uses it as is)."""
    context = multiprocessing.get_context("fork")
    shared = _Shared(
        total=plan.requests,
        claimed=context.Value("q", 0),
        done=context.Value("q", 0),
        start=context.Barrier(plan.concurrency) if plan.processes > 1 else threading.Barrier(plan.concurrency),
    )
    per_process = [len(range(i, plan.concurrency, plan.processes)) for i in range(plan.processes)]

    choices = plan.account_choices()

    def send(index: int) -> tuple[int, Sample]:
        account_id = account_ids[choices[index]] if choices else account_ids[0]
        if plan.is_read(index):
            return account_id, target.read(account_id=account_id)
        return account_id, target.fire(account_id=account_id, plan=plan, run_id=run_id)

    if plan.processes == 1:
        outcome: dict = {}

        def run_here() -> None:
            try:
                outcome["result"] = _run_workers(per_process[0], shared, send, target)
            except BaseException as failure:  # noqa: BLE001 - re-raised in the calling thread below
                outcome["failure"] = failure

        runner = threading.Thread(target=run_here, name="attack-workers")
        runner.start()
        _report_progress(shared, plan.requests, on_progress, alive=runner.is_alive)
        runner.join()
        if "failure" in outcome:
            raise outcome["failure"]
        samples, first_start, last_end = outcome["result"]
        return samples, last_end - first_start

    # Forked children must not inherit live database connections (shared sockets).
    connections.close_all()
    results = context.Queue()
    children = [
        context.Process(target=_child, args=(n, shared, send, target, results), name=f"attack-{i}")
        for i, n in enumerate(per_process)
    ]
    for child in children:
        child.start()
    # Until every request is answered, not until the children exit: a child cannot exit before
    # the parent reads its results from the queue's pipe (64 KiB), so waiting for the exit would
    # deadlock any run whose samples outgrow the pipe (e.g. --requests 4000 --processes 2).
    _report_progress(
        shared,
        plan.requests,
        on_progress,
        alive=lambda: shared.done.value < plan.requests and any(c.is_alive() for c in children),
    )
    messages = _collect(results, children)
    for child in children:
        child.join()
    failures = [payload for kind, payload in messages if kind == "failure"]
    if failures:
        raise RuntimeError(f"an attack process failed:\n{failures[0]}")
    samples = [Sample(*row) for _, (rows, _, _) in messages for row in rows]
    first_start = min(start for _, (_, start, _) in messages)
    last_end = max(end for _, (_, _, end) in messages)
    return samples, last_end - first_start


def _collect(results, children: list) -> list:
    """One message per child, read before join(): a child cannot exit until its queue drains."""
    messages = []
    while len(messages) < len(children):
        try:
            messages.append(results.get(timeout=1))
        except queue.Empty:
            if not any(child.is_alive() for child in children):
                raise RuntimeError("an attack process died without reporting its results") from None
    return messages


Send = Callable[[int], tuple[int, Sample]]  # request number -> (the account it went to, what the client saw)


def _child(threads: int, shared: _Shared, send: Send, target: Target, results) -> None:
    try:
        samples, first_start, last_end = _run_workers(threads, shared, send, target)
        results.put(("result", ([tuple(s) for s in samples], first_start, last_end)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("failure", traceback.format_exc()))


def _run_workers(threads: int, shared: _Shared, send: Send, target: Target) -> tuple[list[Sample], float, float]:
    """Run `threads` workers in this process; return their samples and the time span."""
    samples: list[Sample] = []
    spans: list[tuple[float, float]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        mine: list[Sample] = []
        client = defaultdict(ClientView)  # what this worker saw, per account
        try:
            shared.start.wait()
            started = time.perf_counter()
            while (index := shared.claim()) is not None:
                account_id, sample = send(index)
                mine.append(client[account_id].observe(sample))
                shared.finished_one()
            ended = time.perf_counter()
            with lock:
                samples.extend(mine)
                spans.append((started, ended))
        except BaseException as failure:  # noqa: BLE001 - collected and re-raised after join
            shared.start.abort()  # never leave the other workers waiting at the barrier
            with lock:
                failures.append(failure)
        finally:
            target.worker_finished()

    workers = [threading.Thread(target=worker, name=f"attack-worker-{i}") for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if failures:
        # The first real error, not the BrokenBarrierError it caused in the others.
        real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
        raise (real or failures)[0]
    return samples, min(s for s, _ in spans), max(e for _, e in spans)


def _report_progress(shared: _Shared, total: int, on_progress: ProgressCallback | None, alive) -> None:
    while alive():
        if on_progress is not None:
            on_progress(shared.done.value, total)
        time.sleep(0.1)  # progress display refresh rate, not synchronisation
    if on_progress is not None:
        on_progress(shared.done.value, total)
