"""bench/ceiling.py: the replay sends exactly what Django sends, and the ceiling loses nothing."""

from __future__ import annotations

import pytest

from bench import ceiling
from bench.ceiling import BEGIN, COMMIT, EXECUTE, ROLLBACK, RawTarget, Step
from ledger.attack.engine import AttackPlan, run_attack
from ledger.models import DeductionAttempt, Outcome
from tests.support import mysql_only

INSERT = "INSERT INTO `ledger_deductionattempt` (`account_id`, `amount`, `events`) VALUES (%s, %s, %s)"


def test_insert_columns_are_read_from_the_statement():
    assert ceiling.insert_columns(INSERT) == ["account_id", "amount", "events"]


def test_identical_deductions_on_two_accounts_do_not_differ():
    ours = [Step(BEGIN), Step(EXECUTE, INSERT, (5, 100, "[1]")), Step(EXECUTE, "SELECT %s", ("2026-01-01 10:00:00.1",)),
            Step(COMMIT)]  # fmt: skip
    theirs = [Step(BEGIN), Step(EXECUTE, INSERT, (9, 100, "[2, 3]")),
              Step(EXECUTE, "SELECT %s", ("2026-01-01 10:00:07.5",)), Step(COMMIT)]  # fmt: skip
    columns = ceiling.insert_columns(INSERT)
    assert ceiling.differences(ours, theirs, ids=(5, 9), columns=columns) == []  # events are a measurement


def test_a_different_parameter_framing_or_statement_is_a_difference():
    base = [Step(BEGIN), Step(EXECUTE, INSERT, (5, 100, "[]")), Step(COMMIT)]
    columns = ceiling.insert_columns(INSERT)
    other_amount = [Step(BEGIN), Step(EXECUTE, INSERT, (9, 200, "[]")), Step(COMMIT)]
    (found,) = ceiling.differences(base, other_amount, ids=(5, 9), columns=columns)
    assert found.startswith("step 1 (INSERT") and found.endswith("parameter amount: 100 != 200")
    rolled_back = [Step(BEGIN), Step(EXECUTE, INSERT, (9, 100, "[]")), Step(ROLLBACK)]
    assert ceiling.differences(base, rolled_back, ids=(5, 9), columns=columns)[0].startswith("statements:")
    swapped_ids = [Step(BEGIN), Step(EXECUTE, INSERT, (5, 100, "[]")), Step(COMMIT)]
    assert ceiling.differences(base, swapped_ids, ids=(5, 9), columns=columns) != []  # the other account's id


@mysql_only("the ceiling replays MySQL statements with mysqlclient")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("strategy", ceiling.STRATEGIES)
def test_the_replay_sends_what_django_sends_on_both_paths(strategy):
    program = ceiling.capture(strategy)
    assert set(program.paths) == {Outcome.SUCCEEDED, Outcome.INSUFFICIENT_FUNDS}
    assert program.statements(Outcome.SUCCEEDED)[-1].startswith("INSERT INTO")
    assert ceiling.verify(program) == []


@mysql_only("the ceiling replays MySQL statements with mysqlclient")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("strategy", ceiling.STRATEGIES)
def test_the_ceiling_records_its_attempts_and_loses_nothing_under_contention(strategy):
    plan = AttackPlan(strategy=strategy, requests=60, concurrency=6, processes=2, amount=10, balance=500)
    run = run_attack(plan, target=RawTarget(ceiling.capture(strategy)))
    assert run.target == RawTarget.label and run.balance_loss == 0
    assert run.succeeded + run.conflict + run.insufficient_funds == 60 and run.succeeded <= 50
    recorded = DeductionAttempt.objects.filter(attack_run=run, outcome=Outcome.SUCCEEDED)
    assert recorded.count() == run.succeeded
    assert set(recorded.values_list("instance_id", flat=True)) == {ceiling.INSTANCE_ID}
