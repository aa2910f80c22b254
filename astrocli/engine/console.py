"""What a person (or a script) sees while training.

Three modes (``output.log``, or ``--quiet`` / ``--jsonl``):
- ``rich``: a progress bar per epoch (loss, lr, images/s, ETA) with a second bar while validating
  (and one while the tensor cache is decoded), a table of the epochs' metrics (its header printed
  once, then one row per epoch) and a final summary table;
- ``quiet``: warnings and the run directory only;
- ``jsonl``: one JSON object per line on stdout (``{"event": "epoch", ...}``) for scripts; events
  ``start``, ``task`` (a long step begins: ``text``, ``total``), ``epoch``, ``warning``, ``message``,
  ``summary``.
Only rank 0 prints; the other ranks get a console that says nothing.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from astrocli.output import make_console

METRIC_COLUMNS = (
    ("train_loss", "train loss", "{:.4f}"),
    ("val_loss", "val loss", "{:.4f}"),
    ("val_top1", "top-1 %", "{:.2f}"),
    ("val_top5", "top-5 %", "{:.2f}"),
    ("val_macro_f1", "macro-F1 %", "{:.2f}"),
    ("val_balanced_accuracy", "bal. acc %", "{:.2f}"),
    ("lr", "lr", "{:.2e}"),
    ("img_per_s", "img/s", "{:.1f}"),
    ("seconds", "s", "{:.1f}"),
)


# Minimum widths of the epoch table's columns, so that rows printed one at a time line up under the
# header printed once (a wider value widens only its own row).
EPOCH_WIDTH = 5
METRIC_WIDTH = 9


def _fmt(fmt: str, value: Any) -> str:
    return "-" if value is None or value == "" else fmt.format(value)


class TrainConsole:
    """Progress and results for one training run.

    Args:
        mode: ``rich``, ``quiet`` or ``jsonl``.
        enabled: False on every rank but 0 (nothing is printed there).
    """

    def __init__(self, mode: str = "rich", enabled: bool = True) -> None:
        self.mode = mode
        self.enabled = enabled
        # Piped or redirected, lines are never wrapped (a run dir cut in two cannot be pasted).
        self.out = make_console(highlight=False)
        self.err = make_console(stderr=True, highlight=False)
        self._progress: Progress | None = None
        self._task: Any = None
        self._aux_task: Any = None  # validation / cache decoding: a second bar under the epoch's
        self._aux_progress: Progress | None = None  # the same outside an epoch (no epoch bar to join)
        self._header_printed = False

    # -- plain messages ---------------------------------------------------------------------------

    def _jsonl(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        sys.stdout.flush()

    def info(self, text: str) -> None:
        """A line of context (rich mode only; jsonl gets it as a ``message`` event)."""
        if not self.enabled:
            return
        if self.mode == "rich":
            self.out.print(text)
        elif self.mode == "jsonl":
            self._jsonl("message", text=text)

    def warn(self, text: str) -> None:
        """Something the user should know even in quiet mode (stderr), on a line of its own."""
        if not self.enabled:
            return
        if self.mode == "jsonl":
            self._jsonl("warning", text=text)
            return
        live = self._live()
        if live is not None and live.console.is_terminal:
            # A second console writing under a live bar continues the bar's line; printing through
            # the bar's own console puts the line above the bar (and clears an echoed ^C).
            live.console.print(f"[yellow]warning:[/] {text}", highlight=False)
        else:
            self.err.print(f"[yellow]warning:[/] {text}")

    def _bars_shown(self) -> bool:
        """Bars only on a terminal: piped into a log, a transient bar draws nothing but leaves an
        empty line behind each time it stops (rich), one between every two epoch rows."""
        return self.enabled and self.mode == "rich" and self.out.is_terminal

    def _live(self) -> Progress | None:
        return self._progress or self._aux_progress

    def close(self) -> None:
        """Take any bar off the screen (before an error line, so that it starts a line of its own)."""
        for progress in (self._aux_progress, self._progress):
            if progress is not None:
                progress.stop()
        self._progress = self._aux_progress = None
        self._task = self._aux_task = None

    def start(self, info: dict[str, Any]) -> None:
        """Announce the run: model, data, device, run directory."""
        if not self.enabled:
            return
        if self.mode == "jsonl":
            self._jsonl("start", **info)
        elif self.mode == "rich":
            table = Table(show_header=False, box=None, padding=(0, 1))
            for key, value in info.items():
                table.add_row(f"[bold]{key}[/]", str(value))
            self.out.print(table)

    def first_step(self, global_step: int) -> None:
        """The run's first optimizer step has finished (jsonl: an event with the Unix time, so a
        script can time start-up: ``benchmarks/gpu_check.py`` measures `astro train` to this event)."""
        if self.enabled and self.mode == "jsonl":
            self._jsonl("first_step", step=global_step, time=time.time())

    # -- the per-epoch progress bar ---------------------------------------------------------------

    def epoch_start(self, epoch: int, total_epochs: int, steps: int, completed: int = 0) -> None:
        """Open the progress bar of epoch ``epoch`` (1-based) with ``steps`` batches, ``completed`` done."""
        if not self._bars_shown():
            return
        self.close()
        self._progress = self._new_progress()
        self._progress.start()
        self._task = self._progress.add_task(
            f"[bold]epoch {epoch}/{total_epochs}",
            total=steps,
            completed=completed,
            info="loss -  lr -  - img/s",
        )

    def _new_progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.out,
            transient=True,
        )

    # -- other long steps: validation, decoding the tensor cache (astrocli.bars.ProgressSink) --

    def task_begin(self, description: str, total: int) -> None:
        """A second bar (under the epoch's, or alone outside an epoch) for ``total`` items."""
        if not self.enabled:
            return
        if self.mode == "jsonl":
            self._jsonl("task", text=description, total=total)
            return
        if not self._bars_shown():
            return
        self.task_end()
        progress = self._progress
        if progress is None:
            progress = self._aux_progress = self._new_progress()
            progress.start()
        self._aux_task = progress.add_task(description, total=total, info="")

    def task_update(self, completed: int) -> None:
        """Move the second bar to ``completed`` items."""
        live = self._live()
        if self.enabled and live is not None and self._aux_task is not None:
            live.update(self._aux_task, completed=completed)

    def task_end(self) -> None:
        """Remove the second bar."""
        if self._aux_task is None:
            return
        live = self._live()
        if live is not None:
            live.remove_task(self._aux_task)
        self._aux_task = None
        if self._aux_progress is not None:
            self._aux_progress.stop()
            self._aux_progress = None

    def step(self, done: int, loss: float | None, lr: float, img_per_s: float) -> None:
        """Move the bar to ``done`` batches with the latest running loss, lr and throughput."""
        if not self.enabled:
            return
        if self.mode == "rich" and self._progress is not None:
            shown_loss = "-" if loss is None else f"{loss:.4f}"
            self._progress.update(
                self._task, completed=done, info=f"loss {shown_loss}  lr {lr:.2e}  {img_per_s:.0f} img/s"
            )

    def epoch_end(self, row: dict[str, Any], is_best: bool) -> None:
        """Close the bar and show the epoch's metrics."""
        if not self.enabled:
            return
        self.close()
        if self.mode == "jsonl":
            self._jsonl("epoch", **row, best=is_best)
        elif self.mode == "rich":
            # The header goes with the first row only; later rows are one-row tables without a
            # header, lined up by the columns' minimum widths.
            table = Table(show_edge=False, header_style="bold", show_header=not self._header_printed)
            table.add_column("epoch", justify="right", min_width=EPOCH_WIDTH)
            for _, title, _ in METRIC_COLUMNS:
                table.add_column(title, justify="right", min_width=max(METRIC_WIDTH, len(title)))
            cells = [_fmt(fmt, row.get(key)) for key, _, fmt in METRIC_COLUMNS]
            if is_best and row.get("val_top1") is not None:
                cells[2] = f"[green]{cells[2]} *[/]"
            table.add_row(str(row["epoch"]), *cells)
            self.out.print(table)
            self._header_printed = True

    def finish(self, summary: dict[str, Any]) -> None:
        """The final summary (best top-1, its epoch, time, run dir); quiet mode prints the run dir."""
        if not self.enabled:
            return
        self.close()
        if self.mode == "jsonl":
            self._jsonl("summary", **summary)
            return
        if self.mode == "rich":
            table = Table(title="training finished", show_header=False, title_style="bold")
            table.add_row(
                "best top-1",
                f"{summary['best_top1']:.2f}% (epoch {summary['best_epoch']}, "
                f"{summary['best_weights']} weights)",
            )
            table.add_row("final top-1", _fmt("{:.2f}%", summary.get("final_top1")))
            selected = summary.get("selected_on", "val")
            table.add_row(
                "selected on",
                "[bold red]test split[/] (data.split=test: the papers' protocol)"
                if selected == "test"
                else f"val ({summary.get('select_metric', 'top1')})",
            )
            if summary.get("test_top1") is not None:
                table.add_row(
                    "test",
                    f"top-1 {summary['test_top1']:.2f}%, top-5 {summary['test_top5']:.2f}%, "
                    f"macro-F1 {summary['test_macro_f1']:.2f}%, loss {summary['test_loss']:.4f} "
                    "(best checkpoint, scored once)",
                )
            table.add_row("epochs", str(summary["epochs"]))
            table.add_row("time", f"{summary['total_seconds']:.1f} s")
            table.add_row("images/s", _fmt("{:.1f}", summary.get("mean_img_per_s")))
            table.add_row("run dir", summary["run_dir"])
            self.out.print(table)
        print(summary["run_dir"])
