"""django-prometheus's database backends with a cheaper cursor; the same metrics.

django-prometheus builds a new cursor class for every cursor and looks its metric children up by
label for every statement: about 35 µs of CPU per statement in multiprocess mode on our 2-core
machine, measured (README "Observability"), some 10 % of an in-process deduction, most of it on the
hot path. Here the class, and the children it counts into, are made once per (cursor class,
alias, vendor). What is exported does not change: the counters and the histogram are
django-prometheus's own objects (django_db_execute_total, django_db_execute_many_total,
django_db_query_duration_seconds, django_db_errors_total), and connections are still counted
by its DatabaseWrapperMixin, which the backends here inherit.
"""

from __future__ import annotations

import functools
import time

from django_prometheus.db import errors_total, execute_many_total, execute_total, query_duration_seconds


@functools.cache
def cursor_class(base: type, alias: str, vendor: str) -> type:
    """`base` (the vendor's cursor class) counting and timing every statement it executes."""
    executed = execute_total.labels(alias, vendor)
    executed_many = execute_many_total.labels(alias, vendor)
    duration = query_duration_seconds.labels(alias, vendor)

    def failed(error: Exception) -> None:
        errors_total.labels(alias, vendor, type(error).__name__).inc()

    class CountingCursor(base):
        def execute(self, *args, **kwargs):
            executed.inc()
            started = time.perf_counter()
            try:
                return super().execute(*args, **kwargs)
            except Exception as error:
                failed(error)
                raise
            finally:
                duration.observe(time.perf_counter() - started)

        def executemany(self, query, param_list, *args, **kwargs):
            executed.inc(len(param_list))
            executed_many.inc(len(param_list))
            started = time.perf_counter()
            try:
                return super().executemany(query, param_list, *args, **kwargs)
            except Exception as error:
                failed(error)
                raise
            finally:
                duration.observe(time.perf_counter() - started)

    return CountingCursor
