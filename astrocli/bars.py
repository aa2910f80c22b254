"""Progress of long steps that run outside the training loop's own bar (e.g. decoding the tensor cache).

The code doing the work wraps its loop in :func:`track`; whoever shows progress (the training
console, for the duration of a run) registers itself with :func:`report_to`. Without a registered
sink :func:`track` yields the items and nothing else, so library callers see no output.

    for index in track(range(len(dataset)), "decoding 60000 train images", total=len(dataset)):
        ...

Torch-free, like every module the CLI imports at start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class ProgressSink(Protocol):
    """Something that shows one task's progress (``TrainConsole`` implements it)."""

    def task_begin(self, description: str, total: int) -> None:
        """A task of ``total`` items starts."""

    def task_update(self, completed: int) -> None:
        """``completed`` items of the current task are done."""

    def task_end(self) -> None:
        """The current task finished (or was abandoned)."""


_sink: ProgressSink | None = None


@contextlib.contextmanager
def report_to(sink: ProgressSink | None) -> Iterator[None]:
    """Send the progress of :func:`track` loops to ``sink`` while the block runs."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous


def track(items: Iterable[T], description: str, total: int) -> Iterator[T]:
    """Yield ``items``, telling the registered sink (if any) how many are done."""
    sink = _sink
    if sink is None:
        yield from items
        return
    sink.task_begin(description, total)
    try:
        for done, item in enumerate(items, 1):
            yield item
            sink.task_update(done)
    finally:  # also when the caller breaks out of its loop: the generator is closed then
        sink.task_end()
