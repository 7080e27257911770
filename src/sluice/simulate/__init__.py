"""Synthetic traffic and exporters: ``sluice simulate`` and the built-in demo traffic of ``make run``."""
