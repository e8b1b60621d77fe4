"""MySQL/MariaDB: django-prometheus's backend with the cursor of project.db_backends."""

from django_prometheus.db.backends.mysql import base

from project.db_backends import cursor_class


class DatabaseWrapper(base.DatabaseWrapper):
    def create_cursor(self, name=None):
        return cursor_class(self.CURSOR_CLASS, self.alias, self.vendor)(self.connection.cursor())
