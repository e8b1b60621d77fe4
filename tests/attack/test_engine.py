"""The attack engine, without the command around it."""

from __future__ import annotations

import pytest

from ledger.attack.engine import AttackPlan, ClientView, percentile, run_attack
from ledger.attack.targets import READ, Sample
from ledger.errors import InvalidRequest, UnknownStrategy
from ledger.models import Account, AttackRun, DeductionAttempt, Outcome


@pytest.mark.django_db(transaction=True)
def test_threads_attack_records_every_attempt_and_measures_the_run():
    plan = AttackPlan(strategy="pessimistic", requests=60, concurrency=6, amount=100, balance=5_000)
    progress: list[tuple[int, int]] = []
    run = run_attack(plan, on_progress=lambda done, total: progress.append((done, total)))
    assert run.status == AttackRun.Status.FINISHED
    assert (run.requests, run.succeeded, run.insufficient_funds) == (60, 50, 10)
    assert (run.initial_balance, run.expected_balance, run.actual_balance, run.balance_loss) == (5_000, 0, 0, 0)
    assert run.tps > 0 and 0 < run.p50_ms <= run.p99_ms
    assert run.lock_wait_p99_ms is not None
    assert DeductionAttempt.objects.filter(attack_run=run).count() == 60
    assert progress[-1] == (60, 60)
    assert run.parameters["concurrency"] == 6


@pytest.mark.django_db(transaction=True)
def test_processes_attack_is_served_by_several_instances_and_stays_correct():
    plan = AttackPlan(strategy="atomic", requests=80, concurrency=4, processes=2, amount=10, balance=100_000)
    run = run_attack(plan)
    assert run.succeeded == 80 and run.balance_loss == 0
    instances = set(DeductionAttempt.objects.filter(attack_run=run).values_list("instance_id", flat=True))
    assert len(instances) == 2  # one per forked process: hostname:pid


@pytest.mark.django_db(transaction=True)
def test_existing_account_attack_measures_from_its_current_balance(make_account):
    account = make_account(balance=1_000)
    run = run_attack(AttackPlan(strategy="optimistic", requests=5, concurrency=1, amount=10, account_id=account.pk))
    assert run.account_id == account.pk
    assert (run.initial_balance, run.actual_balance, run.balance_loss) == (1_000, 950, 0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"requests": 0}, "requests"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 2, "processes": 3}, "processes"),
        ({"amount": -1}, "amount"),
        ({"balance": -1}, "balance"),
        ({"think_ms": 5_000}, "think_ms"),
        ({"read_ratio": 1.5}, "read_ratio"),
        ({"read_ratio": -0.1}, "read_ratio"),
        ({"read_ratio": float("nan")}, "read_ratio"),
        ({"read_ratio": True}, "read_ratio"),
    ],
)
def test_bad_plans_are_refused_before_anything_runs(changes, field):
    with pytest.raises(InvalidRequest) as refused:
        run_attack(AttackPlan(strategy="atomic", **changes))
    assert refused.value.field == field
    assert not AttackRun.objects.exists()


@pytest.mark.django_db
def test_unknown_strategy_is_refused_before_anything_runs():
    with pytest.raises(UnknownStrategy):
        run_attack(AttackPlan(strategy="nope"))
    assert not AttackRun.objects.exists()


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50, 99, 100)
    assert percentile([], 0.5) is None
    assert percentile([7], 0.99) == 7


def test_outcome_counts_cover_every_outcome():
    assert {o.value for o in Outcome} <= {f.name for f in AttackRun._meta.get_fields()}


@pytest.mark.parametrize(("ratio", "requests", "reads"), [(0, 400, 0), (0.9, 400, 360), (0.5, 7, 3), (1, 50, 50)])
def test_read_ratio_makes_exactly_that_share_of_requests_reads(ratio, requests, reads):
    plan = AttackPlan(strategy="atomic", requests=requests, read_ratio=ratio)
    pattern = [plan.is_read(i) for i in range(requests)]
    assert sum(pattern) == reads
    if 0 < ratio < 1:
        assert not all(pattern[: requests // 2]) and any(pattern[requests // 2 :])  # spread, not bunched


def test_a_read_older_than_what_the_same_client_saw_committed_is_stale():
    client = ClientView()
    wrote = client.observe(Sample(Outcome.SUCCEEDED, 0.0, 0, None, 5))
    fresh = client.observe(Sample(READ, 0.0, 0, None, 5, "cache"))
    newer = client.observe(Sample(READ, 0.0, 0, None, 8, "cache"))
    older = client.observe(Sample(READ, 0.0, 0, None, 7, "cache"))
    refused = client.observe(Sample(Outcome.INSUFFICIENT_FUNDS, 0.0, 0, None))
    assert [s.stale for s in (wrote, fresh, newer, older, refused)] == [False, False, False, True, False]
    assert ClientView().observe(Sample(READ, 0.0, 0, None, 0, "cache")).stale is False


@pytest.mark.django_db(transaction=True)
def test_a_read_mix_counts_reads_apart_from_the_deductions():
    run = run_attack(AttackPlan(strategy="atomic", requests=100, concurrency=4, amount=10, read_ratio=0.9))
    assert (run.requests, run.reads, run.succeeded) == (100, 90, 10)
    assert run.stale_reads == 0 and 0 < run.cache_hit_rate <= 1
    assert run.read_p50_ms <= run.read_p99_ms and run.p50_ms <= run.p99_ms
    assert DeductionAttempt.objects.filter(attack_run=run).count() == 10
    assert run.parameters["read_ratio"] == 0.9


@pytest.mark.django_db(transaction=True)
def test_processes_whose_results_outgrow_the_queue_pipe_still_report():
    # 2 × 2,000 samples pickle to more than a pipe's 64 KiB: the parent must read them before
    # waiting for the children to exit (it used to wait first, and both sides waited forever).
    plan = AttackPlan(strategy="atomic", requests=4_000, concurrency=4, processes=2, read_ratio=1)
    run = run_attack(plan)
    assert (run.requests, run.reads, run.stale_reads) == (4_000, 4_000, 0)


@pytest.mark.django_db(transaction=True)
def test_spread_attack_deducts_from_every_account_and_sums_their_balances():
    plan = AttackPlan(strategy="pessimistic", requests=120, concurrency=6, amount=10, balance=1_000, accounts=5)
    run = run_attack(plan)
    attempts = DeductionAttempt.objects.filter(attack_run=run)
    accounts = set(attempts.values_list("account_id", flat=True))
    assert len(accounts) == 5
    assert run.account_id is None  # a spread run has no one account; its attempts name theirs
    assert (run.initial_balance, run.succeeded, run.balance_loss) == (5_000, 120, 0)
    balances = Account.objects.filter(pk__in=accounts).values_list("balance", flat=True)
    assert run.actual_balance == 5_000 - 1_200 == sum(balances)
    assert run.parameters["accounts"] == 5


@pytest.mark.django_db(transaction=True)
def test_spread_attack_over_processes_with_reads_sees_no_stale_read_per_account():
    plan = AttackPlan(
        strategy="atomic", requests=200, concurrency=4, processes=2, amount=10, accounts=3, read_ratio=0.5
    )
    run = run_attack(plan)
    assert (run.reads, run.succeeded, run.stale_reads, run.balance_loss) == (100, 100, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_spread_attack_shows_the_loss_of_an_unsafe_strategy_summed_over_accounts():
    plan = AttackPlan(
        strategy="no-lock", requests=200, concurrency=8, amount=10, balance=10_000, accounts=2, think_ms=5
    )
    run = run_attack(plan)
    assert run.succeeded == 200 and run.balance_loss < 0


def test_spread_requests_pick_accounts_at_random_but_the_same_way_every_run():
    plan = AttackPlan(strategy="atomic", requests=1_000, accounts=100)
    choices = plan.account_choices()
    assert choices == AttackPlan(strategy="optimistic", requests=1_000, accounts=100).account_choices()
    assert len(choices) == 1_000 and set(choices) <= set(range(100)) and len(set(choices)) > 90
    assert choices[:16] != sorted(choices[:16])  # not round-robin: concurrent requests can collide
    assert AttackPlan(strategy="atomic").account_choices() is None


@pytest.mark.django_db
@pytest.mark.parametrize(("changes", "message"), [
    ({"accounts": 0}, "must be an integer from 1 to 1000"),
    ({"accounts": 1_001}, "must be an integer from 1 to 1000"),
    ({"accounts": 2, "account_id": 1}, "cannot be combined with an existing account"),
])  # fmt: skip
def test_bad_account_counts_are_refused(changes, message):
    with pytest.raises(InvalidRequest) as refused:
        AttackPlan(strategy="atomic", **changes).validate()
    assert refused.value.field == "accounts" and message in str(refused.value)
