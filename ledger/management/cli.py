"""What every ledger command shares: one-line errors."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from ledger.errors import InvalidRequest, LedgerError


class LedgerCommand(BaseCommand):
    """Bad input ends with one readable line on stderr and a non-zero exit status."""

    # Service field name -> this command's option name, where they differ.
    option_names: dict[str, str] = {}

    def create_parser(self, prog_name: str, subcommand: str, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        command_line_error = parser.error

        def error(message: str) -> None:
            if not parser.called_from_command_line:
                command_line_error(message)  # raises CommandError (call_command)
            self.stderr.write(f"{subcommand}: error: {message}")
            sys.exit(2)

        parser.error = error
        return parser

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except InvalidRequest as invalid:
            option = self.option_names.get(invalid.field, invalid.field).replace("_", "-")
            raise CommandError(f"--{option}: {invalid.message}") from invalid
        except LedgerError as refused:
            raise CommandError(str(refused)) from refused
