"""Exceptions for user mistakes.

Every error a user can cause derives from :class:`UserInputError`. The command line
catches it and prints its message on one line with exit code 2, with no traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A mistake in what the user asked for or supplied (bad name, size or file)."""


class UnknownSettingError(UserInputError, KeyError):
    """A dataset or task name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataFormatError(UserInputError):
    """An observed-runs or data file that cannot be used; names file, row and column."""
