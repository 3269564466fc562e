"""The exception hierarchy: everything queuetopia raises derives from `QueuetopiaError`."""

from __future__ import annotations


class QueuetopiaError(Exception):
    """Base class of every error raised by queuetopia_py."""


class InvalidJobError(QueuetopiaError, ValueError):
    """`create_job` (or an option) was given a value it cannot accept; nothing was written.

    `field` names the offending argument, `value` is what was given.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {reason} (got {shown})")


class ConfigurationError(QueuetopiaError, ValueError):
    """A Queuetopia option is missing or invalid."""


class DatabaseError(QueuetopiaError):
    """The database failed or could not be reached; the operation did not complete."""


class SchemaMissingError(DatabaseError):
    """The queuetopia tables do not exist: run `queuetopia migrate URL` or `migrate(url)`."""
