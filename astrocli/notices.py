"""Warnings meant for the person at the console, and the skipped-image log.

* :func:`warn_user`: one ``warning: ...`` line on stderr, written directly: astro's own messages do
  not go through Python's warnings filter, so ``PYTHONWARNINGS=ignore`` (often set to silence
  library noise) cannot hide them. Skipped images are told this way.
* :class:`AstroWarning` (a ``UserWarning``): library code warns with it as usual; the CLI installs
  :func:`install_warning_printer`, which prints it as one ``warning: ...`` line instead of Python's
  ``file:line: UserWarning: ...`` followed by the source line. Other warnings print as Python does.
* :class:`SkippedImagesWarning`: images that could not be decoded and were skipped, worded by
  :func:`skipped_images_line` (a count and the first few paths, one line).
* :class:`SkipLog`: the images skipped while a run reads its data, gathered from the main process
  *and* the DataLoader worker processes (which hold copies of the dataset, so an in-memory list
  would never reach the trainer) in an append-only file; the trainer reports the new ones as one
  line per epoch.

Torch-free: the CLI imports it at start-up.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

MAX_LISTED = 5  # paths named in one line; the rest are counted


class AstroWarning(UserWarning):
    """A warning for the CLI user: printed as one ``warning:`` line, without Python's source line."""


class SkippedImagesWarning(AstroWarning):
    """Images that could not be decoded were skipped (the message names a count and the first few)."""


def skipped_images_line(
    paths: Sequence[str], where: str | Path | None = None, limit: int = MAX_LISTED
) -> str:
    """``3 unreadable images under DIR skipped: a.jpg, b.jpg and 1 more`` (one line)."""
    count = len(paths)
    noun = "image" if count == 1 else "images"
    under = f" under {where}" if where else ""
    listed = ", ".join(str(p) for p in paths[:limit])
    more = f" and {count - limit} more" if count > limit else ""
    return f"{count} unreadable {noun}{under} skipped: {listed}{more}"


def warn_user(text: str, stream: TextIO | None = None) -> None:
    """Write ``warning: TEXT`` as one line on ``stream`` (default stderr), whatever the warnings filter."""
    out = stream or sys.stderr
    label = "\x1b[33mwarning:\x1b[0m" if getattr(out, "isatty", lambda: False)() else "warning:"
    try:
        out.write(f"{label} {' '.join(str(text).split())}\n")
        out.flush()
    except (OSError, ValueError):  # stderr closed: nothing to tell
        pass


class SkipLog:
    """Images skipped while reading, from this process and from DataLoader workers.

    Each skip is appended to ``path`` as one ``PATH<TAB>REASON`` line with a single ``write`` in
    append mode, which POSIX keeps whole when several processes append at once. Pickles to workers
    as a plain path.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reported: set[str] = set()  # in the process that reads the log (the trainer)

    def add(self, image_path: str, reason: str) -> None:
        """Record that ``image_path`` was skipped (a log that cannot be written is not worth a crash)."""
        line = f"{image_path}\t{' '.join(reason.split())}\n"
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError:
            pass

    def mark_reported(self, paths: Sequence[str]) -> None:
        """Count ``paths`` as told already (their line was printed when the folder was indexed)."""
        self._reported.update(paths)

    def new_paths(self) -> list[str]:
        """Paths skipped since the last call, each once, in the order they were first logged."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        new: list[str] = []
        for line in lines:
            image_path = line.split("\t", 1)[0]
            if image_path and image_path not in self._reported:
                self._reported.add(image_path)
                new.append(image_path)
        return new

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


def install_warning_printer(stream: TextIO | None = None) -> None:
    """Print :class:`AstroWarning` as one ``warning: MESSAGE`` line on ``stream`` (default stderr).

    Installed by the CLI, so the rule holds in DataLoader workers forked from it too. Warnings of
    other categories keep Python's format.
    """
    previous = warnings.showwarning
    if getattr(previous, "_astro_printer", False):
        return

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file=None, line=None) -> None:
        if not issubclass(category, AstroWarning):
            previous(message, category, filename, lineno, file, line)
            return
        warn_user(str(message), file or stream)

    show._astro_printer = True  # type: ignore[attr-defined]
    warnings.showwarning = show
