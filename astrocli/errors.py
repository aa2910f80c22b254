"""User-facing errors.

Anything a user can cause (a missing file, a bad recipe key, a corrupt checkpoint) raises
:class:`AstroError`. The CLI prints its message as one line and exits with ``exit_code``;
it never shows a traceback for these.
"""

from __future__ import annotations


class AstroError(Exception):
    """An error caused by the user's input, reported as a single line.

    Args:
        message: what was wrong and how to fix it, in one sentence.
        exit_code: process exit status (2 = bad input, 1 = a failure while working).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RecipeError(AstroError):
    """A recipe key is unknown, has the wrong type, or an override is malformed."""


class CheckpointError(AstroError):
    """A checkpoint is missing, not safetensors, truncated, or for another architecture."""


class DataError(AstroError):
    """A dataset is missing, unreadable, or fails its checksum."""
