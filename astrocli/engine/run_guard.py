"""What protects a run directory: one writer at a time, no debris from failed starts, no run lost
to a full disk, and a clear way on when the resume state is damaged.

    guard = RunGuard(enabled=dist.is_main)
    guard.start(run_dir, created=True)      # lock RUN_DIR/.astro-train.lock (a second writer refuses)
    guard.check_space(model, recipe)        # refuse to start what the disk cannot hold
    ...                                     # on failure: guard.failed(exc), then re-raise
    guard.release()                         # always (finally)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from astrocli.engine.run_dir import RESUME_FILE
from astrocli.engine.state import saved_progress
from astrocli.errors import AstroError, DiskFullError

LOCK_FILE = ".astro-train.lock"
CHECKPOINT_FILES = (RESUME_FILE, "last.safetensors", "best.safetensors")
SPACE_MARGIN_BYTES = 4 * 2**20  # metrics.csv, summary.json, curves.png and some slack


class RunLocked(AstroError):
    """Another `astro train` is writing this run directory."""


class NotEnoughSpace(AstroError):
    """The disk cannot hold the run's checkpoints; refused before training."""


class RunGuard:
    """Lock, space check and failure handling for one run directory (active on the main rank only)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir: Path | None = None
        self.created = False
        self._lock: Any = None
        self.new_folders: list[Path] = []  # deepest first

    def note_new_folders(self, output_dir: str | Path) -> None:
        """Remember which folders of ``output.dir`` do not exist yet, so that a failed start removes
        the ones it created (and only those) with its run directory."""
        folder = Path(output_dir).absolute()
        while not folder.exists() and folder != folder.parent:
            self.new_folders.append(folder)
            folder = folder.parent

    def start(self, run_dir: Path, *, created: bool) -> None:
        """Take the run's lock; ``created``: the directory is new, so a failed start may remove it."""
        self.run_dir, self.created = Path(run_dir), created
        if not self.enabled:
            return
        from filelock import FileLock, Timeout  # filelock: portable (fcntl/msvcrt) and released on exit

        lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            self.created = False  # not ours to remove
            raise RunLocked(
                f"another `astro train` is already writing {self.run_dir} (lock {LOCK_FILE}); "
                "wait for it to finish or stop it, then run this again"
            ) from None
        self._lock = lock

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_space(self, model: Any, recipe: Any) -> None:
        """Refuse to start when the disk cannot hold the run's checkpoints and resume state.

        A run that fills the disk on its first save has nothing to resume from, so that case is
        caught before training rather than an epoch later.
        """
        if not self.enabled or self.run_dir is None:
            return
        needed = estimated_run_bytes(model, recipe)
        free = shutil.disk_usage(self.run_dir).free
        if free < needed:
            raise NotEnoughSpace(
                f"only {free / 2**20:.1f} MB free on the disk holding {self.run_dir}, and this run's "
                f"checkpoints and resume state need about {needed / 2**20:.1f} MB; free some space or set "
                "output.dir to another disk",
                exit_code=1,
            )

    def failed(self, exc: BaseException) -> None:
        """After a failure: remove a new run directory that holds no checkpoint, and raise a full-disk
        error again saying what is kept and how to continue."""
        if not self.enabled or self.run_dir is None:
            return
        removed = self._removed_empty_run()
        if isinstance(exc, DiskFullError):
            note = (
                "nothing had been saved yet, so the run directory was removed: free space, then start again"
                if removed
                else resume_note(self.run_dir)
            )
            written = exc.path.name if exc.path is not None else "a file"
            raise DiskFullError(
                f"no space left on the device while writing {written} of {self.run_dir}; {note}",
                path=exc.path,
            ) from None

    def _removed_empty_run(self) -> bool:
        """Remove the run directory when this command created it and no checkpoint was written."""
        run_dir = self.run_dir
        if not self.created or run_dir is None or not run_dir.is_dir():
            return False
        if any((run_dir / name).exists() for name in CHECKPOINT_FILES):
            return False
        self.release()
        shutil.rmtree(run_dir, ignore_errors=True)
        for folder in self.new_folders:  # output.dir folders this run created, if left empty
            try:
                folder.rmdir()
            except OSError:
                break
        return True


def estimated_run_bytes(model: Any, recipe: Any) -> int:
    """Bytes a run writes at most: best + last, plus the resume state (weights, optimizer moments,
    EMA) and one temporary copy of it while it is atomically replaced."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = 2 if recipe.train.optimizer == "adamw" else 1
    resume = weights * (1 + moments + (1 if recipe.train.ema else 0))
    return 2 * weights + 2 * resume + SPACE_MARGIN_BYTES


def resume_note(run_dir: Path) -> str:
    """What is kept after a failed save, and the command that continues."""
    progress = saved_progress(run_dir / RESUME_FILE)
    if progress is None:
        return "no resume state had been written yet: free space, then start the run again"
    epoch, step = progress.get("epoch", 0), progress.get("step_in_epoch", 0)
    where = f"epoch {epoch}" + (f", step {step}" if step else "")
    return f"the resume state ({where}) is intact: free space, then run `astro train --resume {run_dir}`"
