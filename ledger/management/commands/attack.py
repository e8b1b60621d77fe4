"""`manage.py attack`: fire concurrent deductions at a strategy (or all) and compare them."""

from __future__ import annotations

import json

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ledger.attack import http, launcher
from ledger.attack.engine import AttackPlan, run_attack
from ledger.attack.report import format_value, run_report, table_rows
from ledger.errors import InvalidRequest
from ledger.management.cli import LedgerCommand
from ledger.models import AttackRun
from strategies import registry


class Command(LedgerCommand):
    help = "Fire concurrent deductions at one strategy (or all) and report TPS, latency and balance loss."
    option_names = {"strategy": "mode"}

    def add_arguments(self, parser) -> None:
        defaults = AttackPlan(strategy="")
        parser.add_argument("--mode", default="all", help="A strategy name, or 'all' (default).")
        parser.add_argument("--requests", type=int, default=defaults.requests)
        parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="Concurrent workers.")
        parser.add_argument(
            "--processes", type=int, default=defaults.processes, help="Spread the workers over P processes."
        )
        parser.add_argument("--amount", type=int, default=defaults.amount, help="Minor units per deduction.")
        parser.add_argument(
            "--balance", type=int, default=defaults.balance, help="Opening balance (of each account), minor units."
        )
        parser.add_argument("--think-ms", type=int, default=defaults.think_ms, help="Delay between read and write.")
        parser.add_argument("--account", type=int, help="Attack this existing account instead of a fresh one.")
        parser.add_argument(
            "--read-ratio",
            type=float,
            default=defaults.read_ratio,
            help="Share of the requests (0-1) that read the balance (cached) instead of deducting.",
        )
        parser.add_argument(
            "--accounts",
            type=int,
            default=defaults.accounts,
            help="Spread the requests over N fresh accounts, one picked at random per request (default 1).",
        )
        parser.add_argument("--json", action="store_true", help='Print {"runs": [...]} instead of a table.')
        parser.add_argument("--url", help="Attack the HTTP API of a running server (e.g. http://127.0.0.1:8000).")
        parser.add_argument(
            "--token", help="API token for --url; default: this project's demo token, if the server uses this database."
        )
        parser.add_argument("--launch-id", help="Report progress to this admin launch (set by the admin's launcher).")

    def handle(self, *args, **options) -> None:
        if options["token"] and not options["url"]:
            raise InvalidRequest("token", "only applies with --url")
        target = http.connect(options["url"], token=options["token"]) if options["url"] else None
        if options["mode"] != "all":
            strategies = [options["mode"] if target else registry.get(options["mode"]).name]
        else:
            strategies = target.strategy_names() if target else registry.names()
        if options["account"] is not None and len(strategies) > 1:
            raise InvalidRequest("account", "cannot be combined with --mode all (each strategy needs a fresh account)")
        plans = [
            AttackPlan(
                strategy=name,
                requests=options["requests"],
                concurrency=options["concurrency"],
                processes=options["processes"],
                amount=options["amount"],
                balance=options["balance"],
                think_ms=options["think_ms"],
                account_id=options["account"],
                read_ratio=options["read_ratio"],
                accounts=options["accounts"],
            )
            for name in strategies
        ]
        for plan in plans:
            plan.validate()  # refuse bad input before the first run starts

        console = Console(file=self.stderr._out, stderr=True)
        runs = []
        reporter = launcher.reporter(options["launch_id"])
        with (
            reporter,
            Progress(
                TextColumn("{task.description:<12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                disable=options["json"] or not console.is_terminal,
            ) as progress,
        ):
            for plan in plans:
                task = progress.add_task(plan.strategy, total=plan.requests)
                reporter.started(plan)
                runs.append(
                    run_attack(
                        plan,
                        target=target,
                        on_progress=reporter.wrap(lambda done, total, t=task: progress.update(t, completed=done)),
                    )
                )
                reporter.finished(runs[-1])
        reports = [run_report(run) for run in runs]
        if options["json"]:
            self.stdout.write(json.dumps({"runs": reports}, indent=2))
            return
        self.render(reports, plans[0])

    def render(self, reports: list[dict], plan: AttackPlan) -> None:
        console = Console(file=self.stdout._out, width=max(110, 24 + 14 * len(reports)))
        requests = f"{plan.requests} deductions of {plan.amount}"
        captions = ["balance loss = expected − actual: non-zero is money the ledger lost track of"]
        if plan.read_ratio:
            requests = f"{plan.requests} requests ({plan.read_ratio:.0%} balance reads, deductions of {plan.amount})"
            captions.append("stale read = older than a version the same worker had already seen committed")
        title = f"{requests} · concurrency {plan.concurrency} · {plan.processes} process(es) · think {plan.think_ms} ms"
        if plan.accounts > 1:
            title += f" · spread over {plan.accounts} accounts"
        if reports[0]["target"] != AttackRun.IN_PROCESS:
            title += f" · {reports[0]['target']}"
        table = Table(title=title, caption="\n".join(captions))
        table.add_column("")
        for report in reports:
            table.add_column(report["strategy"], justify="right")
        for label, key in table_rows(reports):
            cells = [format_value(key, report[key]) for report in reports]
            if key in ("balance_loss", "stale_reads"):
                cells = [
                    f"[bold red]{c}[/]" if r[key] else f"[bold green]{c}[/]"
                    for c, r in zip(cells, reports, strict=True)
                ]
            table.add_row(label, *cells)
        console.print(table)
