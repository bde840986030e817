"""Mongol: a self-hosted web analytics service (tracking pixel + map/reduce reports)."""

__version__ = "0.2.0"
