"""``train.time: MINUTES``: a time budget instead of an epoch count (as Ultralytics' ``time=``).

The first epoch runs under ``train.epochs``' schedule (nothing has been measured yet). At the end of
each epoch's training, before its evaluation, :meth:`TimeBudget.plan` counts how many more epochs
fit in what is left of the budget at the measured time per epoch, and the trainer rebuilds the
schedule (warmup, cosine, cooldown, all per optimizer update) for that many epochs, from the update
it has reached. Planning before the evaluation means that the epoch that uses up the budget is
planned as the last one, so it is evaluated, saved (``best`` and ``last``) and followed by the test
scoring like any last epoch.

Choices where a time budget leaves room:
- Time per epoch: the median of the epochs measured in this session, the first left out once there
  are others (it holds the data cache's first pass and kernel autotuning). Each measured span runs
  from one plan to the next: an epoch's training plus the previous one's evaluation and checkpoints;
  the first starts after the compiling warm-up (:meth:`TimeBudget.mark`), whose time the budget
  counts but does not take for an epoch's.
- The plan is free to grow or shrink after the first two epochs; later it only shrinks (a late plan
  that grew would stretch a schedule already past its middle; one that shrinks keeps the budget).
- At least one epoch always runs, and epochs are never cut in the middle: a run ends at most one
  epoch's time past its budget, when an epoch takes longer than those measured before it.
- The budget counts the training time of every session of a run (``Progress.budget_spent_s``, kept
  in the resume state): ``astro train --resume`` trains for what is left, not for a fresh budget,
  and keeps the saved plan and schedule until its first epoch is measured.
- The final test scoring, calibration and plots come after the budget, as in Ultralytics.
- ``train.time`` wins over ``train.epochs``, which then only shapes the first epoch's schedule.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

clock = time.monotonic  # the budget's clock (tests replace it)

FREE_PLANS = 2  # after this many epochs, a new plan may only shrink


@dataclass
class TimeBudget:
    """The budget of one training session; ``spent_s`` is what earlier sessions of the run used."""

    minutes: float
    spent_s: float = 0.0
    started: float = field(default_factory=lambda: clock())
    last_mark: float | None = None
    spans: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, train: Any, spent_s: float, say: Callable[[str], None]) -> TimeBudget | None:
        """This session's budget for ``train`` (a TrainConfig; None without ``train.time``), with the
        time earlier sessions of the run used; ``say`` gets the line that explains it."""
        if train.time is None:
            return None
        say(describe(train.time, train.epochs) or "")
        return cls(train.time, spent_s=spent_s)

    def plan_line(self, total: int, done: int) -> str:
        return (
            f"train.time: {total} epochs in {self.minutes:g} min "
            f"({self.seconds_per_epoch():.1f} s per epoch measured, {done} done)"
        )

    def mark(self) -> None:
        """Start the next measured span now (after the compiling warm-up)."""
        self.last_mark = clock()

    def elapsed_s(self) -> float:
        return self.spent_s + clock() - self.started

    def seconds_per_epoch(self) -> float:
        """The median measured span, without the first once others exist."""
        spans = self.spans[1:] if len(self.spans) > 1 else self.spans
        return statistics.median(spans)

    def plan(self, done: int, current_total: int) -> int:
        """The total epochs to plan after ``done`` epochs of training (at least ``done``)."""
        now = clock()
        self.spans.append(now - (self.started if self.last_mark is None else self.last_mark))
        self.last_mark = now
        left = self.minutes * 60 - self.elapsed_s()
        per_epoch = max(self.seconds_per_epoch(), 1e-9)
        total = done + max(0, math.floor(left / per_epoch))
        if len(self.spans) > FREE_PLANS and total > current_total:
            return current_total
        return total


def describe(minutes: float | None, epochs: int) -> str | None:
    """The line ``--print-recipe`` and the start of a run show for a budget (None without one)."""
    if minutes is None:
        return None
    return (
        f"train.time {minutes:g} min: the epochs are planned from the measured time per epoch after "
        f"the first one (train.epochs={epochs} shapes only the first epoch's schedule)"
    )
