"""`make bench`: every strategy against the physical ceiling, in one run, on this machine.

    python -m bench.run [--smoke] [--output-dir DIR] [--requests N] [--http-requests N] [--budget-s S]

Runs, in one process tree and in one go (so that every ratio is taken side by side):

1. the raw-SQL ceiling of each correct strategy (bench/ceiling.py: the statements Django sends,
   replayed on plain mysqlclient connections), right before the same strategy in-process;
2. each strategy in-process through the attack engine, 16 threads, then 2 processes × 8 threads;
3. each strategy over HTTP (bench/stack.py): one gunicorn instance directly and nginx in front of
   two, each after the bare hello view through the same topology (the HTTP ceiling);

for three workloads (hot account, spread over 100 accounts, 90 % balance reads). Writes
BENCHMARKS.md and BENCHMARKS.json (or into --output-dir) and prints the targets. Uses the database
and Redis the environment names (`make bench` defaults them to the machine's MariaDB and Redis).
Bounded: a fixed number of requests per run, HTTP timeouts, and a time budget after which the
remaining rows are reported as missing. Exit status 1 if a correct strategy lost money or a run
failed; speed targets that do not hold are results, reported, not failures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import django

REPO = Path(__file__).resolve().parent.parent
FINDINGS = Path(__file__).resolve().parent / "findings.md"

# Why a row has no figures. Only ERROR makes the run fail: the others are the design, the machine,
# the time budget or the caller's selection.
DESIGN, ENVIRONMENT, BUDGET, ERROR, SELECTION = "design", "environment", "budget", "error", "selection"
HELLO_FACTOR = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Tiny runs that prove the harness works (CI).")
    parser.add_argument("--output-dir", type=Path, default=REPO, help="Where BENCHMARKS.md/.json go.")
    parser.add_argument("--requests", type=int, help="Requests per in-process and ceiling run (default 3000).")
    parser.add_argument("--http-requests", type=int, help="Requests per HTTP run (default 800).")
    parser.add_argument("--budget-s", type=float, help="Stop starting runs after this many seconds (default 510).")
    for name in ("workloads", "topologies", "strategies"):
        parser.add_argument(f"--{name}", help=f"Only these {name} (comma-separated); the others are listed as missing.")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.requests = args.requests or (48 if smoke else 3000)
    args.http_requests = args.http_requests or (32 if smoke else 800)
    args.budget_s = args.budget_s or (120 if smoke else 510)
    for name in ("workloads", "topologies", "strategies"):
        value = getattr(args, name)
        setattr(args, name, set(value.split(",")) if value else None)
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from rich.console import Console

        self.args = args
        self.started = time.monotonic()
        self.rows: list[dict] = []
        self.console = Console(stderr=True, width=200)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{self.elapsed():5.0f} s[/] {message}", highlight=False)

    def selected(self, **row: str) -> bool:
        chosen = {"workload": self.args.workloads, "topology": self.args.topologies, "strategy": self.args.strategies}
        return all(chosen[key] is None or value in chosen[key] for key, value in row.items())

    def add(
        self, *, workload: str, topology: str, strategy: str, measure: Callable | None = None, why=None
    ) -> dict | None:
        """Measure one row (`measure()` returns a summarised AttackRun) or record why it is missing;
        return the row when it was measured."""
        from bench import report

        where = f"{workload} · {report.TOPOLOGIES[topology]} · {strategy}"
        if why is None and not self.selected(workload=workload, topology=topology, strategy=strategy):
            why = (SELECTION, "not selected (--workloads, --topologies, --strategies)")
        if why is None and self.elapsed() > self.args.budget_s:
            why = (BUDGET, f"the time budget ({self.args.budget_s:.0f} s) was used up before this run")
        if why is not None:
            kind, reason = why
            self.rows.append(report.row(workload=workload, topology=topology, strategy=strategy, missing=reason,
                                        missing_kind=kind))  # fmt: skip
            if kind != SELECTION:
                self.say(f"[yellow]{where}: missing ({reason})[/]")
            return None
        began = time.monotonic()
        try:
            run = measure()
        except Exception as failure:  # noqa: BLE001 - a failed run is a missing row with its reason, never a crash
            reason = f"{type(failure).__name__}: {failure}".splitlines()[0][:300]
            self.rows.append(report.row(workload=workload, topology=topology, strategy=strategy, missing=reason,
                                        missing_kind=ERROR))  # fmt: skip
            self.say(f"[red]{where}: failed ({reason})[/]")
            return None
        line = report.row(workload=workload, topology=topology, strategy=strategy, run=run)
        self.rows.append(line)
        loss = line["balance_loss"]
        self.say(
            f"{where}: {report.fmt(line['tps'], 'tps')} TPS, p99 {report.fmt(line['p99_ms'])} ms, "
            f"loss {report.fmt(loss)} ({time.monotonic() - began:.1f} s)"
        )
        return line

    def bracket(self, ceiling: dict, measure: Callable) -> None:
        """Measure a ceiling again after the app's runs: its TPS becomes the mean of the two, so that
        a machine that got busier (or quieter) during the app's runs moves both sides of the ratio."""
        from bench import report

        try:
            again = measure()
        except Exception as failure:  # noqa: BLE001 - the first measurement stands, and says so
            ceiling["tps_runs"] = [ceiling["tps"]]
            self.say(f"[red]{ceiling['strategy']} ceiling, second run failed: {failure}[/]")
            return
        ceiling["tps_runs"] = [ceiling["tps"], again.tps]
        ceiling["tps"] = (ceiling["tps"] + again.tps) / 2
        ceiling["balance_loss"] = ceiling["balance_loss"] or again.balance_loss
        self.say(f"{ceiling['workload']} · ceiling · {ceiling['strategy']} again: {report.fmt(again.tps, 'tps')} TPS")


def plan_for(workload: str, strategy: str, *, requests: int, processes: int = 1):
    from bench import report
    from ledger.attack.engine import AttackPlan

    amount = 100
    if workload == report.SPREAD:
        # Each account can pay three times its fair share: random picks are uneven.
        return AttackPlan(strategy=strategy, requests=requests, processes=processes, amount=amount, accounts=100,
                          balance=max(1, 3 * requests // 100) * amount)  # fmt: skip
    read_ratio = 0.9 if workload == report.READ_HEAVY else 0.0
    # Enough for every request to deduct: the benchmark measures the deduction, not the refusal.
    return AttackPlan(strategy=strategy, requests=requests, processes=processes, amount=amount,
                      balance=requests * amount, read_ratio=read_ratio)  # fmt: skip


def statement_label(step) -> str:
    from bench import ceiling

    if step.kind != ceiling.EXECUTE:
        return "START TRANSACTION" if step.kind == ceiling.BEGIN else step.kind
    sql = step.sql.replace("`", "")
    if sql.startswith("INSERT"):
        table = sql.split()[2]
        return f"INSERT INTO {table} ({len(ceiling.insert_columns(step.sql))} columns)"
    return sql


def capture_programs(bench: Bench) -> tuple[dict, dict]:
    """Each correct strategy's captured statements, verified against the replay; or why there are none."""
    from django.db import connection

    from bench import ceiling

    programs, unavailable = {}, {}
    if connection.vendor != "mysql":
        reason = f"the ceiling replays MySQL/MariaDB statements with mysqlclient; this run uses {connection.vendor}"
        return {}, dict.fromkeys(ceiling.STRATEGIES, (ENVIRONMENT, reason))
    for strategy in ceiling.STRATEGIES:
        try:
            program = ceiling.capture(strategy)
            differences = ceiling.verify(program)
        except Exception as failure:  # noqa: BLE001 - reported as the ceiling rows' reason
            unavailable[strategy] = (ERROR, f"capturing its statements failed: {type(failure).__name__}: {failure}")
            continue
        if differences:
            unavailable[strategy] = (ERROR, "the replay does not send what Django sends: " + differences[0][:300])
        else:
            programs[strategy] = program
    bench.say(f"captured and verified the statements of {', '.join(programs) or 'no strategy'}")
    return programs, unavailable


def in_process(bench: Bench, programs: dict, unavailable: dict) -> None:
    from bench import report
    from bench.ceiling import RawTarget
    from ledger.attack.engine import run_attack
    from strategies import registry

    requests = bench.args.requests
    for workload in report.WORKLOADS:
        for strategy in registry.all_strategies():
            name = strategy.name
            if not strategy.safe_across_processes:
                why = (DESIGN, "no ceiling for a strategy that loses updates: there is nothing worth reaching")
            elif workload == report.READ_HEAVY:
                why = (DESIGN, "the ceiling replays the deduction SQL; this workload's reads are served by Redis")
            else:
                why = unavailable.get(name)

            def ceiling_run(w=workload, n=name):
                return run_attack(plan_for(w, n, requests=requests), target=RawTarget(programs[n]))

            ceiling = bench.add(workload=workload, topology=report.CEILING, strategy=name, why=why, measure=ceiling_run)
            for topology, processes in ((report.THREADS, 1), (report.PROCESSES, 2)):
                bench.add(
                    workload=workload, topology=topology, strategy=name,
                    measure=lambda w=workload, n=name, p=processes: run_attack(
                        plan_for(w, n, requests=requests, processes=p)
                    ),
                )  # fmt: skip
            if ceiling is not None:
                bench.bracket(ceiling, ceiling_run)


def over_http(bench: Bench) -> dict:
    from bench import report
    from bench.stack import HelloTarget, running_cluster
    from deploy import cluster
    from ledger.attack import http
    from ledger.attack.engine import AttackPlan, fire, run_attack, summarise
    from ledger.models import AttackRun
    from strategies import registry

    requests = bench.args.http_requests
    names = registry.names()

    def every_row(why) -> None:
        for topology in report.HTTP_TOPOLOGIES:
            bench.add(workload=report.HOT, topology=topology, strategy=report.HELLO, why=why)
            for workload in report.WORKLOADS:
                for name in names:
                    bench.add(workload=workload, topology=topology, strategy=name, why=why)

    if not any(bench.selected(topology=topology) for topology in report.HTTP_TOPOLOGIES):
        every_row((SELECTION, "not selected (--topologies)"))
        return {}
    if bench.elapsed() > bench.args.budget_s:
        every_row((BUDGET, f"the time budget ({bench.args.budget_s:.0f} s) was used up before the HTTP runs"))
        return {}
    try:
        stack_context = running_cluster(say=lambda message: bench.say(f"cluster: {message}"))
        stack = stack_context.__enter__()
    except Exception as failure:  # noqa: BLE001 - every HTTP row then says why it is missing
        kind = ENVIRONMENT if isinstance(failure, cluster.ClusterError) else ERROR
        every_row((kind, f"the local cluster did not start: {failure}".splitlines()[0][:300]))
        return {}
    try:
        for topology, url in ((report.HTTP_ONE, stack.one_instance), (report.HTTP_NGINX, stack.behind_nginx)):
            target = http.connect(url, token=None)

            def hello(url=url) -> AttackRun:
                # Four times the requests: at its rate, the deductions' count would be over in a blink.
                plan = AttackPlan(strategy=report.HELLO, requests=HELLO_FACTOR * requests)
                samples, wall_s = fire(plan, HelloTarget(url, token="unused"), [0])
                run = AttackRun(strategy=report.HELLO, target=url, requests=plan.requests)
                summarise(run, samples, wall_s)
                return run

            bench.add(workload=report.HOT, topology=topology, strategy=report.HELLO, measure=hello)
            for workload in report.WORKLOADS:
                for name in names:
                    bench.add(
                        workload=workload, topology=topology, strategy=name,
                        measure=lambda w=workload, n=name, t=target: run_attack(
                            plan_for(w, n, requests=requests), target=t
                        ),
                    )  # fmt: skip
    finally:
        stack_context.__exit__(None, None, None)
    return {"gunicorn": f"{stack.workers} workers × {stack.threads} threads (gthread) per instance"}


def machine_facts(bench: Bench) -> dict:
    from django.conf import settings
    from django.db import connection
    from django_redis import get_redis_connection

    facts = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown",
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "database": connection.vendor,
    }
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin,"
                " @@innodb_buffer_pool_size, @@max_connections"
            )
            version, flush, sync_binlog, log_bin, pool, max_connections = cursor.fetchone()
        facts.update(
            {
                "database version": version,
                "innodb_flush_log_at_trx_commit": flush,
                "sync_binlog": f"{sync_binlog} (binary log {'on' if log_bin else 'off'})",
                "innodb_buffer_pool_size": f"{int(pool) // 2**20} MiB",
                "max_connections": max_connections,
                "isolation (the app's and the ceiling's connections)": "READ COMMITTED",
            }
        )
    try:
        info = get_redis_connection("default").info()
        facts["redis"] = (
            f"{info.get('redis_version')} (appendonly {'yes' if info.get('aof_enabled') else 'no'},"
            f" {info.get('rdb_changes_since_last_save', '?')} changes since last RDB save)"
        )
    except Exception as failure:  # noqa: BLE001 - a fact we could not read is written as such
        facts["redis"] = f"unknown ({failure})"
    facts["redis url"] = settings.REDIS_URL.split("@")[-1]
    facts["nginx"] = _run(["nginx", "-v"], stderr=True) or "not installed"
    facts["load average (1/5/15 min) at start"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return facts


def _run(command: list[str], *, stderr: bool = False) -> str:
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return (done.stderr if stderr else done.stdout).strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return "unknown"
    return f"{total_kib / 2**20:.0f} GiB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()

    from django.core.management import call_command
    from rich.console import Console
    from rich.table import Table

    from bench import report
    from strategies import registry

    bench = Bench(args)
    call_command("createdb")
    call_command("migrate", interactive=False, verbosity=0)
    facts = machine_facts(bench)
    bench.say(f"machine: {facts['cores']} cores, {facts['database']} {facts.get('database version', '')}")

    programs, unavailable = capture_programs(bench)
    in_process(bench, programs, unavailable)
    deployment = over_http(bench)

    facts["load average (1/5/15 min) at end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["duration_s"] = round(bench.elapsed(), 1)
    correct = [s.name for s in registry.all_strategies() if s.safe_across_processes]
    rows = report.attach_ratios(bench.rows)
    targets = report.evaluate_targets(rows, correct=correct, duration_s=bench.elapsed())
    parameters = {
        "concurrency": "16 workers (threads; the processes topology: 2 × 8)",
        "requests per run": f"{args.requests:,} (ceiling and in-process), {args.http_requests:,} (HTTP;"
        f" the hello view {HELLO_FACTOR * args.http_requests:,})",
        "amount": "100 per deduction; balances cover every request (3× the fair share per account when spread)",
        "HTTP client": "the attack's own (one keep-alive connection per worker), on the same 2 cores",
        **deployment,
    }
    statements = {
        name: {path: [statement_label(step) for step in steps] for path, steps in program.paths.items()}
        for name, program in programs.items()
    }
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "BENCHMARKS.md").write_text(
        report.markdown(
            facts=facts, parameters=parameters, rows=rows, targets=targets, statements=statements, findings=findings
        )
    )
    payload = {"machine": facts, "parameters": parameters, "targets": targets, "rows": rows,
               "seed": report.SEED, "ceiling_statements": statements}  # fmt: skip
    (args.output_dir / "BENCHMARKS.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")

    console = Console(width=160)
    for workload, title in report.WORKLOADS.items():
        lines = report.result_table(rows, workload)
        table = Table(title=title)
        for header in lines[0]:
            table.add_column(header, justify="left" if header in ("strategy", "topology") else "right")
        for cells in lines[1:]:
            table.add_row(*cells)
        console.print(table)
    table = Table(title="targets")
    for header in report.targets_table(targets)[0]:
        table.add_column(header)
    for cells in report.targets_table(targets)[1:]:
        table.add_row(*[cell.replace("**", "") for cell in cells])
    console.print(table)
    console.print(f"wrote {args.output_dir / 'BENCHMARKS.md'} and BENCHMARKS.json in {bench.elapsed():.0f} s")

    lost = next(t for t in targets if t["target"] == "correct strategies lose nothing")
    failed = [r for r in rows if r.get("missing_kind") == ERROR]
    for line in failed:
        where = f"{line['strategy']} · {line['workload']} · {line['topology']}"
        console.print(f"[red]failed: {where}: {line['missing']}[/]")
    return 1 if failed or lost["ok"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
