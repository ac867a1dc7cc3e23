"""Pillarbox: a complete Internet mail system."""

__version__ = "0.1.0"
