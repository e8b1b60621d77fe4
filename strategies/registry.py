"""The one place a strategy is looked up by name (like Django's cache handler).

Every module of this package is imported on first use; modules register their class with
`@register`. Adding a strategy means adding one module.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

from ledger.errors import UnknownStrategy
from strategies.base import Strategy

_strategies: dict[str, Strategy] = {}
_discovered = False
_discover_lock = threading.Lock()
_NOT_STRATEGIES = {"base", "registry"}


def register(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in _strategies and type(_strategies[cls.name]) is not cls:
        raise ValueError(f"strategy name {cls.name!r} is already registered")
    _strategies[cls.name] = cls()
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _discover_lock:
        if not _discovered:
            package = importlib.import_module("strategies")
            for module in pkgutil.iter_modules(package.__path__):
                if module.name not in _NOT_STRATEGIES:
                    importlib.import_module(f"strategies.{module.name}")
            _discovered = True


def names() -> list[str]:
    """Registered names: the unsafe ones first (they are the lesson), then alphabetical."""
    _discover()
    return sorted(_strategies, key=lambda name: (_strategies[name].safe_across_processes, name))


def get(name: str) -> Strategy:
    _discover()
    try:
        return _strategies[name]
    except KeyError:
        raise UnknownStrategy(name, names()) from None


def all_strategies() -> list[Strategy]:
    return [_strategies[name] for name in names()]
