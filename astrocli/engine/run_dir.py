"""The run directory: every file a training run writes, and the one reader of those files.

    run = RunDir(Path("runs/quickstart"))
    run.read_metrics()       # metrics.csv rows, numbers parsed (blanks are None)
    run.read_summary()       # summary.json, or None while the run is unfinished

Layout (docs/architecture.md)::

    recipe.yaml, split.json        at the start (:meth:`RunDir.write_header`)
    metrics.csv                    one row per epoch, columns METRICS_HEADER, rewritten atomically
    best.safetensors               the selected checkpoint; last.safetensors: the newest one
    resume.safetensors             everything to continue the run exactly (engine/state.py)
    summary.json, curves.png       at the end
    skipped-images.txt             images that could not be decoded, with the reason

The trainer writes through :class:`RunDir`; ``astro cv``, ``astro compare``, ``astro bench --runs``
and ``astro train --resume`` read through it. Importing this module does not import torch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrocli.checkpoint import save_checkpoint
from astrocli.errors import AstroError
from astrocli.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import torch

    from astrocli.checkpoint import CheckpointMeta
    from astrocli.engine.state import ResumeState
    from astrocli.recipe import Recipe

METRICS_HEADER = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_macro_f1",
    "val_balanced_accuracy",
    "lr",
    "img_per_s",
    "seconds",
]
RESUME_FILE = "resume.safetensors"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
SKIPPED_IMAGES_FILE = "skipped-images.txt"  # images that could not be decoded, one per line, with the reason


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (``path``); reading never requires the run to be finished."""

    path: Path

    @property
    def resume_file(self) -> Path:
        return self.path / RESUME_FILE

    @property
    def skipped_images_file(self) -> Path:
        return self.path / SKIPPED_IMAGES_FILE

    def state(self) -> str:
        """``done`` (summary.json written), ``resumable`` (a resume state saved) or ``new``."""
        if (self.path / SUMMARY_FILE).is_file():
            return "done"
        if self.resume_file.is_file():
            return "resumable"
        return "new"

    # -- written at the start ---------------------------------------------------------------------

    def write_header(
        self,
        recipe: Recipe,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        split_info: Mapping[str, Any],
    ) -> None:
        """``recipe.yaml`` (the resolved recipe) and ``split.json`` (classes, normalisation, split)."""
        atomic_write_text(self.path / "recipe.yaml", recipe.to_yaml())
        split = {"class_names": list(class_names), "mean": list(mean), "std": list(std), **split_info}
        atomic_write_text(self.path / "split.json", json.dumps(split, indent=2, default=str))

    # -- metrics.csv ------------------------------------------------------------------------------

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``metrics.csv`` with the exact header of docs/architecture.md, rewritten atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRICS_HEADER, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRICS_HEADER})
        atomic_write_text(self.path / METRICS_FILE, buffer.getvalue())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Rows of ``metrics.csv`` (numbers parsed; blanks are None); [] when there is none."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            return []
        rows = []
        with path.open(newline="") as handle:
            for raw in csv.DictReader(handle):
                row: dict[str, Any] = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()}
                row["epoch"] = int(row["epoch"])
                rows.append(row)
        return rows

    # -- written at the end -----------------------------------------------------------------------

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_text(self.path / SUMMARY_FILE, json.dumps(summary, indent=2))

    def read_split(self) -> dict[str, Any] | None:
        """split.json (the data, the split and which images went where), or None when absent."""
        path = self.path / "split.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def read_summary(self) -> dict[str, Any] | None:
        """A finished run's ``summary.json``, or None (raises json.JSONDecodeError when damaged)."""
        path = self.path / SUMMARY_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def plot_curves(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``curves.png``: losses and top-1/top-5 per epoch."""
        fig = curves_figure(rows)  # selects the Agg backend before pyplot is imported here
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.path / "curves.png", buffer.getvalue())

    # -- checkpoints ------------------------------------------------------------------------------

    def save_model(self, filename: str, state_dict: Mapping[str, torch.Tensor], meta: CheckpointMeta) -> None:
        """``best.safetensors`` or ``last.safetensors`` (atomic)."""
        save_checkpoint(self.path / filename, state_dict, meta)

    def load_resume(self, overrides: Sequence[str] = ()) -> tuple[ResumeState, Recipe]:
        """The saved resume state and the run's recipe with ``KEY=VALUE`` ``overrides`` applied: what
        ``astro train --resume`` continues (and ``--print-recipe`` shows).

        Raises:
            AstroError: no resume state here; a damaged one says how to start from ``last.safetensors``.
        """
        from astrocli.engine.state import load_resume_or_explain  # lazy: keeps start-up torch-free
        from astrocli.recipe import apply_override, recipe_from_dict

        if not self.resume_file.is_file():
            raise AstroError(
                f"'{self.path}' has no {RESUME_FILE}; pass a run directory written by `astro train`"
            )
        resume = load_resume_or_explain(self.resume_file)
        raw = resume.recipe
        for item in overrides:
            apply_override(raw, item)
        return resume, recipe_from_dict(raw)


def unique_run_dir(output_dir: str, name: str) -> Path:
    """``<output.dir>/<output.name>``, or the first free ``-2``, ``-3``, ... so no run is overwritten."""
    base = Path(output_dir) / name
    candidate, n = base, 1
    while True:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()  # atomic: two runs starting at once get different directories
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        except OSError as exc:  # read-only, no permission, full: one line naming the key to change
            raise AstroError(
                f"cannot create the run directory {candidate} ({exc.strerror}); "
                "set output.dir to a writable folder"
            ) from None


def curves_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The figure of ``curves.png`` (losses; validation top-1/top-5), epochs on integer ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    acc = [(r["epoch"], r["val_top1"], r["val_top5"]) for r in rows if r.get("val_top1") is not None]
    if acc:
        ax_acc.plot([a[0] for a in acc], [a[1] for a in acc], label="top-1")
        ax_acc.plot([a[0] for a in acc], [a[2] for a in acc], label="top-5")
        ax_acc.legend()
    ax_acc.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    for ax in (ax_loss, ax_acc):  # epochs are whole: no tick at 1.2, 1.4, ... on a short run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
