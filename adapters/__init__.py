"""Implementations of the ports in ``sender.ports``: storage, triggers, destinations, ledgers.

Each module registers its classes under an entry-point group in ``pyproject.toml``; the core
never imports this package directly.
"""
