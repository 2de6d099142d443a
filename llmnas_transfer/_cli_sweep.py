"""CLI commands (placeholder until this group lands)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this module's commands to the CLI."""
