"""`manage.py createdb`: create the MySQL/MariaDB database DATABASE_URL names, if missing."""

from __future__ import annotations

from django.db import connection

from ledger.management.cli import LedgerCommand


class Command(LedgerCommand):
    help = "Create the database named by DATABASE_URL if it does not exist (MySQL/MariaDB; SQLite needs nothing)."

    def handle(self, *args, **options) -> None:
        if connection.vendor != "mysql":
            return
        import MySQLdb  # the driver Django's MySQL backend uses

        params = connection.get_connection_params()
        name = params.pop("database", None) or connection.settings_dict["NAME"]
        params.pop("init_command", None)
        server = MySQLdb.connect(**params)
        try:
            quoted = connection.ops.quote_name(name)
            server.cursor().execute(
                f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        finally:
            server.close()
