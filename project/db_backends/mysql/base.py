"""MySQL/MariaDB: django-prometheus's backend with the cursor of project.db_backends, and
transactions opened by START TRANSACTION.

Django's `atomic()` on MySQL turns autocommit off to begin (`SET autocommit=0`), commits, and turns
it back on (`SET autocommit=1`): three round trips of transaction control per transaction, where
`START TRANSACTION … COMMIT` needs two — the session never leaves autocommit mode, and COMMIT or
ROLLBACK ends the explicit transaction by itself. Django's hook for this exists for SQLite
(`_start_transaction_under_autocommit`, used only by `atomic()`); defining it here makes `atomic()`
send START TRANSACTION, and turning autocommit "back on" then costs nothing because mysqlclient
skips `SET autocommit=1` when the server reports it on (it always was). On a hot account the saved
round trip is part of every deduction; measured in BENCHMARKS.md. Manual transaction management
(`set_autocommit(False)` outside `atomic()`) is unchanged.
"""

from django.db.backends.utils import debug_transaction
from django_prometheus.db.backends.mysql import base

from project.db_backends import cursor_class


class DatabaseWrapper(base.DatabaseWrapper):
    def create_cursor(self, name=None):
        return cursor_class(self.CURSOR_CLASS, self.alias, self.vendor)(self.connection.cursor())

    def _start_transaction_under_autocommit(self) -> None:
        # Logged as "BEGIN", like the stock backend's SET autocommit=0 (query counts stay the same).
        with debug_transaction(self, "BEGIN"), self.wrap_database_errors, self.connection.cursor() as cursor:
            cursor.execute("START TRANSACTION")
