"""Command-line interface: ``scalepool <command> ...``."""

from ._main import main

__all__ = ["main"]
