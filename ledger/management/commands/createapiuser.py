"""`manage.py createapiuser`: a user with an API token, for demos and `attack --url`."""

from __future__ import annotations

from ledger.api.tokens import DEMO_USERNAME, ensure_token
from ledger.management.cli import LedgerCommand


class Command(LedgerCommand):
    help = "Create (or reuse) an API user and print its token (send it as 'Authorization: Token <token>')."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default=DEMO_USERNAME, help=f"Default: {DEMO_USERNAME}.")
        parser.add_argument("--rotate", action="store_true", help="Replace the user's token with a new one.")

    def handle(self, *args, **options) -> None:
        self.stdout.write(ensure_token(username=options["username"], rotate=options["rotate"]))
