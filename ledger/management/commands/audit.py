"""`manage.py audit`: prove that recorded successes and balances agree."""

from __future__ import annotations

import json
from dataclasses import asdict

from django.core.management.base import CommandError
from rich.console import Console
from rich.table import Table

from ledger import metrics
from ledger.management.cli import LedgerCommand
from ledger.services import audit


class Command(LedgerCommand):
    help = "Check opening + adjustments − succeeded deductions == balance (and balance >= 0) for every account."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--account", type=int, action="append", help="Audit only this account (repeatable).")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        # A full audit also refreshes the balance-loss metrics every instance exports.
        lines = audit(account_ids=options["account"]) if options["account"] else metrics.audit_and_publish()
        discrepancies = [line for line in lines if not line.ok]
        if options["json"]:
            report = {
                "accounts_checked": len(lines),
                "ok": not discrepancies,
                "discrepancies": [dict(asdict(line), balance_loss=line.balance_loss) for line in discrepancies],
            }
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.render(len(lines), discrepancies)
        if discrepancies:
            raise CommandError(f"{len(discrepancies)} of {len(lines)} accounts do not balance", returncode=1)

    def render(self, checked: int, discrepancies: list) -> None:
        console = Console(file=self.stdout._out, width=120)
        if not discrepancies:
            console.print(f"[green]OK[/]: {checked} accounts checked, every balance matches its records.")
            return
        table = Table(title="Accounts whose balance does not match the ledger")
        for column in ("account", "name", "opening", "adjustments", "deducted", "expected", "actual", "loss"):
            table.add_column(column, justify="left" if column == "name" else "right")
        for line in discrepancies:
            table.add_row(
                str(line.account_id),
                line.name,
                f"{line.opening_balance:,}",
                f"{line.adjustments:+,}",
                f"{line.deducted:,}",
                f"{line.expected_balance:,}",
                f"{line.balance:,}",
                f"[bold red]{line.balance_loss:,}[/]",
            )
        console.print(table)
