from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "ledger"
    verbose_name = "Ledger"

    def ready(self) -> None:
        from ledger import metrics
        from ledger.models import Outcome
        from strategies import registry

        metrics.initialise(strategies=registry.names(), outcomes=Outcome.values)
