"""Sluice: network flow analytics server with threshold alerting."""

__version__ = "0.1.0"
