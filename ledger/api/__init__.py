"""The HTTP API (Django REST framework): thin views over ledger.services and ledger.selectors."""
