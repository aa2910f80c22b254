"""Cross-validation: stratified (repeated) k-fold x seeds, each fold an ordinary run (``astro cv``).

    parent = run_cv(load_recipe("quickstart"), folds=5)   # runs/quickstart-cv/fold<i>-seed<j>/
    report = aggregate(parent)                            # also written to parent/cv.json
    report["metrics"]["top1"]["mean"], report["metrics"]["top1"]["ci95"]

Layout of the parent folder:

- ``cv_plan.json``: the base recipe and ``folds``/``repeats``/``seeds`` (a re-run must match it);
- ``fold<i>-seed<j>/``: ordinary run directories (``i`` counts folds across repeats: repeat ``r``,
  fold ``f`` is ``i = r * folds + f``; ``j`` adds to ``train.seed``);
- ``cv.json``: per metric the values (in plan order), mean, std and Student-t 95% interval.

Each run's recipe records its fold (``data.folds``/``data.fold``/``data.fold_repeat``), so a run
resumes through the ordinary ``--resume`` machinery and ``astro eval`` on its checkpoint scores its
own held-out fold. A re-run skips finished runs and resumes interrupted ones; ``cv.json`` holds no
wall-clock figures, so an interrupted-and-resumed cv writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrocli.engine.run_dir import RunDir
from astrocli.errors import AstroError, OutputError, write_error
from astrocli.experiments.predictions import write_oof, write_predictions
from astrocli.files import atomic_write_text
from astrocli.recipe import Recipe, recipe_from_dict
from astrocli.redact import redact_url
from astrocli.stats import t_interval

PLAN_FILE = "cv_plan.json"
CV_FILE = "cv.json"
# Metrics of the selected checkpoint on the held-out fold (summary.json "best_metrics").
VAL_METRICS = ("top1", "top5", "macro_f1", "balanced_accuracy", "loss")
TEST_METRICS = tuple(f"test_{m}" for m in VAL_METRICS)


@dataclass(frozen=True)
class CvRun:
    """One fold x seed of the plan."""

    repeat: int
    fold: int  # within the repeat
    seed: int  # added to train.seed
    folds: int

    @property
    def index(self) -> int:
        """The fold's number across repeats (``repeat * folds + fold``)."""
        return self.repeat * self.folds + self.fold

    @property
    def name(self) -> str:
        """The run's folder name under the parent."""
        return f"fold{self.index}-seed{self.seed}"


def plan_runs(folds: int, repeats: int, seeds: int) -> list[CvRun]:
    """Every run of the cv, in a fixed order (repeat, fold, seed)."""
    return [
        CvRun(repeat, fold, seed, folds)
        for repeat in range(repeats)
        for fold in range(folds)
        for seed in range(seeds)
    ]


def check_plan(folds: int, repeats: int, seeds: int) -> None:
    """Refuse counts that cannot make a cv (the class sizes are checked against the data later)."""
    if folds < 2:
        raise AstroError(f"--folds must be at least 2 for cross-validation, got {folds}; try --folds 5")
    if repeats < 1:
        raise AstroError(f"--repeats must be at least 1, got {repeats}")
    if seeds < 1:
        raise AstroError(f"--seeds must be at least 1, got {seeds}")


def select_runs(
    runs: list[CvRun], folds: int, repeats: int, fold: int | None, seed: int | None
) -> list[CvRun]:
    """The runs ``--fold I [--seed J]`` names (all runs when neither is given)."""
    total, seeds = folds * repeats, max(r.seed for r in runs) + 1
    if fold is not None and not 0 <= fold < total:
        raise AstroError(
            f"--fold {fold} is out of range: {folds} folds x {repeats} repeats give folds 0..{total - 1}"
        )
    if seed is not None and not 0 <= seed < seeds:
        raise AstroError(f"--seed {seed} is out of range: --seeds {seeds} gives seeds 0..{seeds - 1}")
    if seed is not None and fold is None:
        raise AstroError("--seed needs --fold (one run of a job array: --fold I --seed J)")
    return [r for r in runs if (fold is None or r.index == fold) and (seed is None or r.seed == seed)]


def parent_dir(recipe: Recipe) -> Path:
    """``<output.dir>/<output.name>-cv``: fixed (not numbered), so a re-run finds and resumes it."""
    return Path(recipe.output.dir) / f"{recipe.output.name}-cv"


def run_recipe(base: Recipe, run: CvRun) -> Recipe:
    """The base recipe for one run: its fold, its seed, its name."""
    # A deep copy keeps the keys the user set (given_keys): augment.preset auto fills the rest from
    # each fold's data as `astro train` would (a copy rebuilt from to_dict() would count every key set).
    recipe = copy.deepcopy(base)
    recipe.data.folds, recipe.data.fold, recipe.data.fold_repeat = run.folds, run.fold, run.repeat
    recipe.train.seed = base.train.seed + run.seed
    recipe.output.dir, recipe.output.name = str(parent_dir(base)), run.name
    return recipe


def write_plan(parent: Path, base: Recipe, folds: int, repeats: int, seeds: int) -> None:
    """Record the plan, or check that it matches the one already in ``parent``."""
    plan = {"folds": folds, "repeats": repeats, "seeds": seeds, "recipe": base.to_dict()}
    path = parent / PLAN_FILE
    try:
        _write_plan(parent, path, plan)
    except OSError as exc:  # a read-only or foreign output.dir: one line, not a traceback
        error = write_error(path, exc)
        if not isinstance(error, AstroError):
            error = OutputError(f"cannot write {path} ({exc.strerror or exc}); choose a writable output.dir")
        raise error from None


def _write_plan(parent: Path, path: Path, plan: dict[str, Any]) -> None:
    if path.is_file():
        old = json.loads(path.read_text())
        if not same_plan(old, plan):
            what = [k for k in ("folds", "repeats", "seeds") if old.get(k) != plan[k]] or ["recipe"]
            raise AstroError(
                f"{parent} holds a cv with a different {', '.join(what)}; resume it with the same "
                f"command, or start another with output.name=NEW_NAME"
            )
        return
    parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=2) + "\n")


def same_plan(old: dict[str, Any], plan: dict[str, Any]) -> bool:
    """Whether a saved plan is ``plan``; recipe keys added by a later astro (a plan written by an
    older one lacks them) count as their defaults, so such a cv still resumes."""
    try:
        if isinstance(old.get("recipe"), dict):
            old = {**old, "recipe": recipe_from_dict(old["recipe"]).to_dict()}
    except AstroError:  # a key this astro no longer knows: not the same plan
        return False
    return json.loads(json.dumps(old)) == json.loads(json.dumps(plan))


def run_state(run_dir: Path) -> str:
    """``done`` (summary.json), ``resumable`` (resume state saved) or ``new``."""
    return RunDir(run_dir).state()


def check_data(base: Recipe, runs: Sequence[CvRun]) -> None:
    """Build the first run's datasets once, so too many folds fail before any training starts."""
    from astrocli.data import build_datasets  # lazy: keeps start-up torch-free

    build_datasets(run_recipe(base, runs[0]).data)


def run_one(
    base: Recipe,
    run: CvRun,
    parent: Path,
    log: str | None = None,
    step_hook: Callable[..., None] | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Train (or resume, or skip) one run of the cv; returns its directory."""
    from astrocli.engine import train  # lazy: keeps start-up torch-free

    run_dir = parent / run.name
    state = run_state(run_dir)
    if state == "done":
        say(f"{run.name}: finished earlier, kept")
    elif state == "resumable":
        say(f"{run.name}: resuming")
        # The run's recipe.yaml holds a tracking URL without its password: give the real one back.
        uri = base.output.mlflow_uri
        again = [f"output.mlflow_uri={uri}"] if uri and redact_url(uri) != uri else []
        train(resume_dir=run_dir, overrides=again, log=log, step_hook=step_hook)
    else:
        say(f"{run.name}: training")
        train(run_recipe(base, run), run_dir=run_dir, log=log, step_hook=step_hook)
    # The fold model's probabilities on its held-out fold: the out-of-fold rows of oof.npz (kept on
    # a re-run; a run finished by an older astro gets them now, without retraining).
    write_predictions(run_dir, device=base.train.device)
    return run_dir


def run_cv(
    base: Recipe,
    folds: int = 5,
    repeats: int = 1,
    seeds: int = 1,
    *,
    fold: int | None = None,
    seed: int | None = None,
    log: str | None = None,
    step_hook: Callable[..., None] | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Run the cv's runs one after another (or just ``--fold``/``--seed``); returns the parent.

    Writes ``cv.json`` at the end unless only one run was asked for (job arrays aggregate later).
    """
    from astrocli.engine import TrainingInterrupted  # lazy: keeps start-up torch-free

    check_plan(folds, repeats, seeds)
    runs = plan_runs(folds, repeats, seeds)
    chosen = select_runs(runs, folds, repeats, fold, seed)
    check_data(base, runs)
    parent = parent_dir(base)
    write_plan(parent, base, folds, repeats, seeds)
    for number, run in enumerate(chosen, 1):
        prefix = f"[{number}/{len(chosen)}] "
        try:
            run_one(base, run, parent, log, step_hook, say=lambda text, p=prefix: say(p + text))
        except TrainingInterrupted as exc:
            # The fold saved its resume state; the cv resumes it (and runs the rest) on a re-run.
            stopped = str(exc).split("; continue it with:")[0]
            raise TrainingInterrupted(
                f"{stopped} ({run.name}); re-run the same `astro cv` command to resume it and run the rest",
                exit_code=exc.exit_code,
            ) from None
    if fold is None:
        aggregate(parent)
    return parent


def run_parallel(
    recipe_arg: str,
    overrides: Sequence[str],
    base: Recipe,
    folds: int,
    repeats: int,
    seeds: int,
    parallel: int,
    devices: Sequence[str] = (),
    say: Callable[[str], None] = print,
) -> Path:
    """Run ``parallel`` runs at a time as ``astro cv --fold I --seed J`` subprocesses, then aggregate.

    Each subprocess gets one of ``devices`` as ``CUDA_VISIBLE_DEVICES`` (a device is handed to the
    next run only when its previous run ends); its output goes to ``PARENT/logs/<run>.log``.
    """
    check_plan(folds, repeats, seeds)
    if parallel < 1:
        raise AstroError(f"--parallel must be at least 1, got {parallel}")
    runs = plan_runs(folds, repeats, seeds)
    check_data(base, runs)
    parent = parent_dir(base)
    write_plan(parent, base, folds, repeats, seeds)
    (parent / "logs").mkdir(exist_ok=True)
    free: queue.Queue[str | None] = queue.Queue()
    for slot in range(parallel):
        free.put(devices[slot % len(devices)] if devices else None)

    def launch(run: CvRun) -> tuple[CvRun, int]:
        device = free.get()
        try:
            env = dict(os.environ)
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = device
            command = [sys.executable, "-m", "astrocli", "cv", "--recipe", recipe_arg]
            command += ["--folds", str(folds), "--repeats", str(repeats), "--seeds", str(seeds)]
            command += ["--fold", str(run.index), "--seed", str(run.seed), "--quiet", *overrides]
            with (parent / "logs" / f"{run.name}.log").open("w") as handle:
                code = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
            say(f"{run.name}: {'finished' if code == 0 else f'failed (exit {code})'}")
            return run, code
        finally:
            free.put(device)

    todo = [r for r in runs if run_state(parent / r.name) != "done"]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(launch, todo))
    failed = [run.name for run, code in results if code != 0]
    if failed:
        raise AstroError(
            f"{len(failed)} run(s) failed: {', '.join(failed)}; see {parent / 'logs'}, then re-run the "
            "same command to resume them",
            exit_code=1,
        )
    aggregate(parent)
    return parent


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The selected checkpoint's held-out metrics (``top1``, ...) and test metrics (``test_top1``, ...)."""
    values = {k: summary["best_metrics"][k] for k in VAL_METRICS if k in summary.get("best_metrics", {})}
    values.update({k: summary[k] for k in TEST_METRICS if summary.get(k) is not None})
    return values


def aggregate(parent: str | Path, write: bool = True) -> dict[str, Any]:
    """Write ``PARENT/cv.json`` from the finished runs and return it (``write=False``: only return it;
    ``astro compare`` reads cv folders without writing into them).

    Raises:
        AstroError: ``parent`` is not a cv folder, or no run in it has finished.
    """
    parent = Path(parent)
    plan_path = parent / PLAN_FILE
    if not plan_path.is_file():
        raise AstroError(f"'{parent}' is not a cv folder (no {PLAN_FILE}); pass the folder `astro cv` made")
    plan = json.loads(plan_path.read_text())
    runs = plan_runs(plan["folds"], plan["repeats"], plan["seeds"])
    finished: list[str] = []
    missing: list[str] = []
    per_run: list[dict[str, float]] = []
    selected_on = set()
    for run in runs:
        summary = RunDir(parent / run.name).read_summary()
        if summary is None:
            missing.append(run.name)
            continue
        finished.append(run.name)
        per_run.append(run_metrics(summary))
        selected_on.add(summary.get("selected_on", "val"))
    if not finished:
        raise AstroError(f"no run in '{parent}' has finished yet (no summary.json); nothing to aggregate")
    metrics = {}
    for key in (*VAL_METRICS, *TEST_METRICS):
        values = [m[key] for m in per_run if key in m]
        if len(values) == len(per_run):
            metrics[key] = t_interval(values)
    recipe = plan["recipe"]
    report = {
        "folds": plan["folds"],
        "repeats": plan["repeats"],
        "seeds": plan["seeds"],
        "recipe": recipe.get("output", {}).get("name"),
        "target": recipe.get("target", ""),
        "model": recipe.get("model", {}).get("name"),
        "data_source": recipe.get("data", {}).get("source"),
        "select_metric": recipe.get("train", {}).get("select_metric", "top1"),
        "selected_on": "test" if "test" in selected_on else "val",
        "runs": finished,
        "missing": missing,
        "metrics": metrics,
    }
    if write:
        atomic_write_text(parent / CV_FILE, json.dumps(report, indent=2) + "\n")
        write_oof(parent, runs)  # oof.npz, oof.csv: held-out probabilities (audit --cv)
    return report


def read_cv(parent: str | Path) -> dict[str, Any]:
    """A cv parent's cv.json (aggregating first when it is missing)."""
    path = Path(parent) / CV_FILE
    return json.loads(path.read_text()) if path.is_file() else aggregate(parent)


def is_cv_parent(path: str | Path) -> bool:
    """Whether ``path`` is a folder made by ``astro cv``."""
    return (Path(path) / PLAN_FILE).is_file()
