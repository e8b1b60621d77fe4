"""`manage.py cluster up|down|status|config`: N gunicorn instances behind nginx on 127.0.0.1 (deploy/cluster.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from deploy import cluster
from ledger.errors import ClusterError
from ledger.management.cli import LedgerCommand


class Command(LedgerCommand):
    help = "Run the docker-compose topology without Docker: N gunicorn instances behind nginx on 127.0.0.1."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{up,down,status,config}")
        defaults = cluster.gunicorn_defaults()
        start = actions.add_parser("up", help="Start the instances and nginx; wait until all are healthy.")
        start.add_argument("--instances", type=int, default=2, help="gunicorn instances (default 2).")
        start.add_argument(
            "--port",
            type=int,
            default=8080,
            help="nginx listens here, instance N on port+N (default 8080, like compose); 0 picks free ports.",
        )
        start.add_argument("--workers", type=int, default=defaults["workers"], help="Workers per instance.")
        start.add_argument("--threads", type=int, default=defaults["threads"], help="Threads per worker.")
        start.add_argument("--timeout", type=float, default=60, help="Seconds to wait for health.")
        stop = actions.add_parser("down", help="Stop exactly the processes `up` started.")
        stop.add_argument(
            "--timeout",
            type=float,
            default=defaults["graceful_timeout"] + 5,
            help="Seconds to wait for a graceful stop before killing.",
        )
        config = actions.add_parser("config", help="Print the nginx.conf `up` would run, checked with nginx -t.")
        config.add_argument("--instances", type=int, default=2)
        config.add_argument("--port", type=int, default=8080)
        show = actions.add_parser("status", help="What runs, and whether it answers /health/ (exit 1 if not all).")
        show.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        getattr(self, options["action"])(options)

    def say(self, message: str) -> None:
        self.stderr.write(message)

    def up(self, options: dict) -> None:
        started = cluster.up(
            instances=options["instances"],
            port=options["port"],
            workers=options["workers"],
            threads=options["threads"],
            timeout_s=options["timeout"],
            say=self.say,
        )
        self.render([cluster.MemberStatus(m.name, m.pid, m.url, True, "200") for m in started.members])
        self.stdout.write(f"nginx: {started.proxy.url}/  ·  logs: {started.run_dir}/  ·  stop: manage.py cluster down")

    def down(self, options: dict) -> None:
        stopped = cluster.down(grace_s=options["timeout"], say=self.say)
        if stopped is None:
            self.stdout.write("no cluster is running")
            return
        names = ", ".join(f"{m.name} (pid {m.pid})" for m in stopped.members)
        self.stdout.write(f"stopped {names}; none of their processes is left")

    def config(self, options: dict) -> None:
        text, verdict = cluster.check_config(instances=options["instances"], port=options["port"])
        self.stdout.write(text, ending="")
        self.say(verdict)

    def status(self, options: dict) -> None:
        statuses = cluster.status()
        if statuses is None:
            raise ClusterError("no cluster is running (start one with `manage.py cluster up`)")
        if options["json"]:
            proxy = next((s for s in statuses if s.name == cluster.PROXY), None)
            report = {
                "ok": all(s.ok for s in statuses),
                "url": proxy.url if proxy else None,
                "members": [asdict(s) for s in statuses],
            }
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.render(statuses)
        failing = [s.name for s in statuses if not s.ok]
        if failing:
            raise ClusterError(f"not healthy: {', '.join(failing)}")

    def render(self, statuses: list[cluster.MemberStatus]) -> None:
        table = Table()
        for column in ("name", "pid", "url", "running", "/health/"):
            table.add_column(column)
        for s in statuses:
            health = f"[green]{s.health}[/]" if s.health == "200" else f"[red]{s.health}[/]"
            table.add_row(s.name, str(s.pid), s.url, "yes" if s.running else "[red]no[/]", health)
        Console(file=self.stdout._out, width=120).print(table)
