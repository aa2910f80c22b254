"""User-facing errors.

Anything a user can cause (a missing file, a bad recipe key, a corrupt checkpoint) raises
:class:`AstroError`. The CLI prints its message as one line and exits with ``exit_code``;
it never shows a traceback for these.
"""

from __future__ import annotations

import errno
from pathlib import Path


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


class OutputError(AstroError):
    """A file could not be written: a read-only folder, no permission, a path through a file."""


class DiskFullError(OutputError):
    """The disk (or quota) is full while writing ``path``; what was written before is kept (atomic writes)."""

    def __init__(self, message: str, exit_code: int = 1, path: Path | None = None) -> None:
        super().__init__(message, exit_code)
        self.path = path


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of ``exc``'s message (cut to ``limit`` characters), or its type's name when it
    has none: what a one-line error quotes of a library's (often multi-line) exception."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line


READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def write_error(path: str | Path, exc: OSError) -> OSError | AstroError:
    """The one-line error for an OSError raised while writing ``path`` (the exception itself if unknown).

    Writes go through a temporary file in the target folder and a rename, so none of these
    leaves a half-written file, and the message says that the previous file is untouched.
    """
    folder = Path(path).parent
    if exc.errno in DISK_FULL_ERRNOS:
        return DiskFullError(
            f"no space left on the device holding {folder} while writing {Path(path).name} "
            "(any previous file of that name is intact); free some space and run the command again",
            path=Path(path),
        )
    if exc.errno in READ_ONLY_ERRNOS:
        return OutputError(
            f"cannot write {path}: {folder} is read-only or not writable by you ({exc.strerror}); "
            "choose a writable folder"
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return OutputError(
            f"cannot write {path}: a part of {folder} is a file, not a folder; choose another path"
        )
    return exc
