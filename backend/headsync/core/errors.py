"""Errors that reach the user.

A :class:`UserError` is bad input: the command exits with code 2 and prints the message and a hint that
says what to do. Anything else is an internal failure (exit code 1).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, with a message and a hint that tells the user what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - formatting only
        return f"{self.message}" + (f"\n  hint: {self.hint}" if self.hint else "")


class Cancelled(Exception):
    """Raised inside a stage when the job was asked to stop (service cancel, Ctrl-C)."""
