"""SQLite: django-prometheus's backend with the cursor of project.db_backends."""

from django_prometheus.db.backends.sqlite3 import base

from project.db_backends import cursor_class


class DatabaseWrapper(base.DatabaseWrapper):
    def create_cursor(self, name=None):
        return self.connection.cursor(factory=cursor_class(self.CURSOR_CLASS, self.alias, self.vendor))
