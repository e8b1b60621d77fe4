"""The HTTP side of the bench: the deployment's own processes, and the bare "hello" view.

`running_cluster()` starts the local cluster (`manage.py cluster`'s code: gunicorn instances with
the project's gunicorn.conf.py behind nginx rendered from nginx.conf) with the hello view enabled,
and always stops it. One instance is attacked directly (its own port), two through nginx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy import cluster
from ledger.attack.http import TRANSPORT_OUTCOMES, HttpTarget
from ledger.attack.targets import Sample
from ledger.models import Outcome

if TYPE_CHECKING:
    from ledger.attack.engine import AttackPlan

HELLO_PATH = "/bench/hello/"


class HelloTarget(HttpTarget):
    """GET /bench/hello/ over the same keep-alive client the HTTP attack uses: the HTTP ceiling."""

    def fire(self, *, account_id: int, plan: AttackPlan, run_id: int | None) -> Sample:
        try:
            answer = self._send("GET", HELLO_PATH)
        except OSError:
            return Sample(Outcome.ERROR.value, 0.0, 0, None)
        if answer.status == 200 and answer.body.get("hello") == "world":
            return Sample(Outcome.SUCCEEDED.value, answer.latency_s, 0, None)
        return Sample(TRANSPORT_OUTCOMES.get(answer.status, Outcome.ERROR.value), answer.latency_s, 0, None)


@dataclass(frozen=True)
class Stack:
    one_instance: str  # URL of app-1, attacked directly
    behind_nginx: str  # URL of nginx in front of app-1 and app-2
    workers: int
    threads: int


@contextmanager
def running_cluster(*, say) -> Iterator[Stack]:
    """Two gunicorn instances behind nginx on free ports of 127.0.0.1, the hello view on; stopped
    (and checked to be gone) on the way out, whatever happened."""
    defaults = cluster.gunicorn_defaults()
    previous = os.environ.get("BENCH_HELLO_VIEW")
    os.environ["BENCH_HELLO_VIEW"] = "true"  # the instances inherit this process's environment
    try:
        started = cluster.up(
            instances=2, port=0, workers=defaults["workers"], threads=defaults["threads"], timeout_s=60, say=say
        )
    finally:
        if previous is None:
            del os.environ["BENCH_HELLO_VIEW"]
        else:
            os.environ["BENCH_HELLO_VIEW"] = previous
    try:
        app_1 = next(member for member in started.members if member.name == "app-1")
        yield Stack(
            one_instance=app_1.url,
            behind_nginx=started.proxy.url,
            workers=defaults["workers"],
            threads=defaults["threads"],
        )
    finally:
        cluster.down(grace_s=defaults["graceful_timeout"] + 5, say=say)
