"""Deduction strategies: one module each, found by `strategies.registry`."""
