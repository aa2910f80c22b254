"""Hyper-parameter search on Optuna: ``astro tune --recipe R --space SPACE.yaml``.

A search space names recipe keys::

    train.lr: {low: 1e-4, high: 3e-3, log: true}     # float, log-uniform
    train.weight_decay: {low: 0.01, high: 0.1}       # float, uniform
    train.warmup_epochs: {low: 0, high: 5}           # int (ints given, or an int recipe key)
    model.drop_rate: {low: 0.0, high: 0.3, step: 0.1}
    train.optimizer: [adamw, sgd]                    # a list: categorical

Every trial is an ordinary ``astro train`` run in ``<output.dir>/<output.name>-tune/trial<N>/``,
scored by ``train.select_metric`` on the validation split (never the test split) and pruned on it
epoch by epoch. The study lives in Optuna's RDB storage (a SQLite file in the tune folder unless
``--storage`` says otherwise): re-running resumes it, several processes given the same storage share
it, and a trial that is interrupted is recorded as failed.

    result = run_tune("quickstart", "space.yaml", trials=20)
    result.best_yaml, result.study.best_trial.params
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import time
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from astrocli.engine.loggers import Callback, has_module, missing_extra_message, parent_run
from astrocli.errors import AstroError, RecipeError, first_line
from astrocli.files import atomic_write_bytes, atomic_write_text
from astrocli.recipe import (
    Recipe,
    describe_yaml_error,
    given_keys,
    load_recipe,
    recipe_from_dict,
    set_given,
)
from astrocli.redact import scrub

# train.select_metric -> the epoch-row key it is read from, and which way is better.
METRIC_KEYS = {
    "top1": "val_top1",
    "macro_f1": "val_macro_f1",
    "balanced_accuracy": "val_balanced_accuracy",
    "loss": "val_loss",
}
PRUNERS = ("median", "hyperband", "none")
RANGE_KEYS = {"low", "high", "log", "step", "type"}
TOP_TRIALS = 10  # rows of the final table
STUDY_FILE = "study.db"
PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: one MLflow parent run across re-runs


# ---------------------------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched recipe key: ``kind`` is ``float``, ``int`` or ``categorical``."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (its name in the study is the recipe key)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's range or choices (enqueueing needs it)."""
        if self.kind == "categorical":
            return value in self.choices
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return self.low <= value <= self.high


def with_values(base: Mapping[str, Any], values: Mapping[str, Any]) -> Recipe:
    """The recipe ``base`` (plain data) with dotted ``values`` set, strictly validated.

    Validation is the recipe loader's own (:func:`astrocli.recipe.recipe_from_dict`): an unknown key
    gets the closest valid names, a wrong type names the expected one.
    """
    raw = copy.deepcopy(dict(base))
    for key, value in values.items():
        node = raw
        *sections, leaf = key.split(".")
        for part in sections:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"'{part}' in '{key}' is a value, not a section")
            node = child
        node[leaf] = value
    return recipe_from_dict(raw)


def recipe_for_trial(base_recipe: Recipe, values: Mapping[str, Any]) -> Recipe:
    """The trial's recipe: ``base_recipe`` with the suggested ``values``. The values count as set and
    the rest as the user left it, so ``augment.preset: auto`` fills what the recipe left out from the
    data, as ``astro train`` would (rebuilt from the full dict, every key would count as set)."""
    recipe = with_values(base_recipe.to_dict(secrets=True), values)  # the trial logs where the user said
    set_given(recipe, given_keys(base_recipe) | set(values))
    return recipe


def _schema_type(key: str) -> Any:
    """The declared type of a dotted recipe key (``Optional[X]`` -> ``X``), or None if unknown."""
    tp: Any = Recipe
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _range_param(key: str, spec: Mapping[str, Any], where: str) -> Param:
    """A ``{low, high, log, step, type}`` mapping as a :class:`Param`, or one line saying what is wrong."""
    unknown = sorted(set(spec) - RANGE_KEYS)
    if unknown:
        raise AstroError(f"{where}: unknown field {', '.join(unknown)} (use low, high, log, step, type)")
    if "low" not in spec or "high" not in spec:
        raise AstroError(f"{where}: a range needs low and high, e.g. {{low: 1e-4, high: 1e-2, log: true}}")
    low, high, step = spec["low"], spec["high"], spec.get("step")
    # PyYAML reads 1e-4 (no dot) as a string: accept what float() accepts, as the recipe loader does.
    try:
        low, high = (v if _is_number(v) else float(v) for v in (low, high))
        step = step if step is None or _is_number(step) else float(step)
    except (TypeError, ValueError):
        raise AstroError(f"{where}: low, high and step must be numbers") from None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise AstroError(f"{where}: log must be true or false, got {log!r}")
    kind = spec.get("type")
    if kind not in (None, "int", "float"):
        raise AstroError(f"{where}: type must be int or float, got {kind!r}")
    if kind is None:
        declared = _schema_type(key)
        both_ints = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
        kind = "int" if declared is int or (declared is not float and both_ints) else "float"
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise AstroError(f"{where}: low must be below high, got low={low} high={high}")
    if log and low <= 0:
        raise AstroError(f"{where}: a log range needs low > 0, got low={low}")
    if step is not None and (step <= 0 or step > high - low):
        raise AstroError(f"{where}: step must be > 0 and at most high - low ({high - low:g}), got {step}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise AstroError(f"{where}: log and step cannot be combined (Optuna samples either)")
    if kind == "int":
        if not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise AstroError(f"{where}: '{key}' is an integer: low, high and step must be whole numbers")
        low, high, step = int(low), int(high), int(step) if step is not None else None
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _categorical_param(key: str, choices: list[Any], where: str) -> Param:
    if not choices:
        raise AstroError(f"{where}: an empty list has nothing to choose from")
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise AstroError(f"{where}: choices must be numbers, strings, booleans or null, got {choice!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise AstroError(f"{where}: the choices repeat a value")
    return Param(key, "categorical", choices=tuple(choices))


def parse_space(data: Any, base: Mapping[str, Any], source: str = "space") -> list[Param]:
    """Validate a search space (already read from YAML) against the recipe ``base`` (plain data).

    Every key must be a recipe key, every bound and choice a valid value for it: all of this is checked
    here, before any training, and reported as one line naming the file and the key.
    """
    if not isinstance(data, dict) or not data:
        raise AstroError(
            f"{source}: a search space is a YAML mapping of recipe keys, e.g. "
            "'train.lr: {low: 1e-4, high: 3e-3, log: true}'"
        )
    params = []
    for key, spec in data.items():
        where = f"{source}: {key}"
        if not isinstance(key, str) or "=" in key:
            raise AstroError(f"{where}: keys are dotted recipe keys such as train.lr")
        if isinstance(spec, list):
            param = _categorical_param(key, spec, where)
            values = list(param.choices)
        elif isinstance(spec, dict):
            param = _range_param(key, spec, where)
            values = [param.low, param.high]
        else:
            raise AstroError(
                f"{where}: give a range {{low: .., high: ..}} or a list of choices, got {spec!r}"
            )
        for value in values:
            try:
                with_values(base, {key: value})
            except RecipeError as exc:
                raise AstroError(f"{source}: {exc}") from None
        params.append(param)
    return params


def load_space(path: str | Path, base: Mapping[str, Any]) -> list[Param]:
    """Read and validate ``SPACE.yaml`` (see :func:`parse_space`)."""
    path = Path(path)
    if not path.is_file():
        raise AstroError(f"search space '{path}' not found; give a YAML file such as space.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AstroError(describe_yaml_error(path, exc)) from None  # the line and column, as recipes
    return parse_space(data, base, str(path))


def _get(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def metric_key(recipe: Recipe) -> tuple[str, str]:
    """The epoch-row key of ``train.select_metric`` and the Optuna direction."""
    metric = recipe.train.select_metric
    return METRIC_KEYS[metric], "minimize" if metric == "loss" else "maximize"


class PruningCallback(Callback):
    """Reports the validation metric after each evaluated epoch and stops the trial when the pruner
    says so (by raising ``optuna.TrialPruned`` through the trainer). Keeps the best value seen."""

    def __init__(self, trial: Any, key: str, direction: str) -> None:
        self.trial, self.key, self.direction = trial, key, direction
        self.best: float | None = None

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        import optuna

        if not any(k.startswith("val_") for k in row):
            return  # not an evaluation epoch (train.eval_every)
        if row.get(self.key) is None:
            raise AstroError(
                f"train.select_metric needs '{self.key}' in the epoch metrics, and this training "
                "does not compute it; choose top1 or loss"
            )
        value = float(row[self.key])
        better = max if self.direction == "maximize" else min
        self.best = value if self.best is None or not math.isfinite(self.best) else better(self.best, value)
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({self.key} {value:.4g})")


def make_pruner(name: str, recipe: Recipe) -> Any:
    """Median (after 2 finished trials, not during warm-up) or Hyperband over epochs; none: NopPruner."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=recipe.train.warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(recipe.train.epochs, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise AstroError(f"--pruner must be one of {', '.join(PRUNERS)}, got '{name}'")


def make_storage(url: str) -> Any:
    """Optuna's RDB storage with heartbeats, so a trial whose process died is marked failed.

    SQLite gets a long lock timeout (several local processes write to one file); PostgreSQL and MySQL
    URLs go to SQLAlchemy as given.
    """
    import optuna
    from optuna.storages import RDBStorage

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    kwargs = dict(
        engine_kwargs=engine_kwargs,
        heartbeat_interval=60,
        grace_period=180,  # a trial silent this long (its process died) is marked failed, not re-run
    )
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, **kwargs)
        except Exception as exc:
            # Processes creating a new database's tables at once race (a table or the alembic version
            # row already exists, or the file is locked): the loser retries and finds them made.
            if attempt == 2:
                error = f"{type(exc).__name__}: {first_line(exc)}"
                # Never the password, even inside the library's message.
                raise AstroError(scrub(f"cannot open the study storage '{url}' ({error})", [url])) from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


@dataclass
class TuneResult:
    """What a search left: the study, its folder and the files written at the end."""

    study: Any
    tune_dir: Path
    metric: str
    direction: str
    best_yaml: Path | None
    plots: list[Path]
    notes: list[str]


def tune_dir_for(recipe: Recipe) -> Path:
    return Path(recipe.output.dir) / f"{recipe.output.name}-tune"


def run_tune(
    recipe: str | Path,
    space: str | Path,
    overrides: Sequence[str] = (),
    *,
    trials: int = 20,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str = "median",
    on_trial: Callable[[Any, Any], None] | None = None,
) -> TuneResult:
    """Run (or continue) a search; see the module docstring.

    Args:
        recipe, overrides: the base recipe, as ``astro train`` takes it.
        space: the SPACE.yaml file.
        trials: trials this call adds (each process adds its own).
        timeout: stop starting new trials after this many seconds.
        storage: an Optuna RDB URL (default ``sqlite:///<tune dir>/study.db``).
        study_name: default ``output.name``.
        pruner: ``median``, ``hyperband`` or ``none``.
        on_trial: called as ``on_trial(study, frozen_trial)`` after each trial (the CLI prints a line).

    Raises:
        AstroError: bad space, recipe or options (before any training); an interrupted trial.
    """
    if not has_module("optuna"):
        raise AstroError(missing_extra_message("astro tune", "tune", "optuna"))
    base_recipe = load_recipe(recipe, list(overrides))
    base = base_recipe.to_dict()
    params = load_space(space, base)
    if trials < 1:
        raise AstroError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise AstroError(f"--timeout must be positive seconds, got {timeout}")
    key, direction = metric_key(base_recipe)
    tune_dir = tune_dir_for(base_recipe)
    tune_dir.mkdir(parents=True, exist_ok=True)
    study, name = _open_study(base_recipe, tune_dir, storage, study_name, pruner, direction)
    notes = _enqueue_recipe_values(study, params, base)
    objective = _objective(base_recipe, params, tune_dir, key, direction)

    with parent_run(
        base_recipe, f"{name}-tune", kind="tune", run_id=study.user_attrs.get(PARENT_ATTR)
    ) as parent:
        if parent.mlflow_run_id and PARENT_ATTR not in study.user_attrs:
            study.set_user_attr(PARENT_ATTR, parent.mlflow_run_id)
            parent.log_params({"study": name, "metric": key, "direction": direction, "pruner": pruner})
        _optimize(study, objective, trials, timeout, [on_trial] if on_trial else [], name)
        result = _finish(study, params, base, tune_dir, key, direction, notes)
        if result.best_yaml is not None:
            parent.log_metrics({f"best_{key}": study.best_value})
            parent.log_artifact(result.best_yaml)
            for plot in result.plots:
                parent.log_artifact(plot)
    return result


def _open_study(
    base_recipe: Recipe,
    tune_dir: Path,
    storage: str | None,
    study_name: str | None,
    pruner: str,
    direction: str,
) -> tuple[Any, str]:
    """The Optuna study (created, or loaded to continue) and its name."""
    import optuna  # lazy: optuna is an optional extra (astrocli[tune])

    storage_url = storage or f"sqlite:///{(tune_dir / STUDY_FILE).resolve()}"
    name = study_name or base_recipe.output.name
    pruner_obj = make_pruner(pruner, base_recipe)

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the CLI prints its own line per trial
    study = optuna.create_study(
        storage=make_storage(storage_url),
        study_name=name,
        direction=direction,
        load_if_exists=True,
        pruner=pruner_obj,
    )
    # Seeded, offset by the trials already there so a re-run does not redraw the same points;
    # constant_liar keeps parallel workers from sampling next to each other's running trials.
    study.sampler = optuna.samplers.TPESampler(
        seed=base_recipe.train.seed + len(study.trials), constant_liar=True
    )
    _check_same_direction(study, direction, name)
    return study, name


def _objective(
    base_recipe: Recipe, params: list[Any], tune_dir: Path, key: str, direction: str
) -> Callable[[Any], float]:
    """One trial: the base recipe with the sampled values, trained quietly; its best metric."""

    def objective(trial: Any) -> float:
        from astrocli.engine import train  # lazy: keeps start-up torch-free

        values = {p.key: p.suggest(trial) for p in params}
        trial_recipe = recipe_for_trial(base_recipe, values)
        trial_recipe.output.dir, trial_recipe.output.name = str(tune_dir), f"trial{trial.number}"
        pruning = PruningCallback(trial, key, direction)
        run_dir = train(trial_recipe, log="quiet", callbacks=[pruning])
        trial.set_user_attr("run_dir", str(run_dir))
        if pruning.best is None:
            raise AstroError(f"trial {trial.number} evaluated no epoch; check train.eval_every")
        return pruning.best

    return objective


def _optimize(
    study: Any,
    objective: Callable[[Any], float],
    trials: int,
    timeout: float | None,
    callbacks: list[Any],
    name: str,
) -> None:
    """Run the trials; a NaN trial fails alone, an interrupted one stops the study (saved, resumable)."""
    import optuna  # lazy: optuna is an optional extra (astrocli[tune])

    from astrocli.engine import NonFiniteLoss, TrainingInterrupted  # lazy: keeps start-up torch-free

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # An enqueued value outside its range is used as asked (the notes say so for the recipe's).
            warnings.filterwarnings("ignore", message="Fixed parameter")
            study.optimize(
                objective, n_trials=trials, timeout=timeout, catch=(NonFiniteLoss,), callbacks=callbacks
            )
    except TrainingInterrupted as exc:
        raise AstroError(
            f"interrupted: the running trial was saved and marked failed in study '{name}' ({exc}); "
            "run the same astro tune command again to continue the study",
            exit_code=exc.exit_code,
        ) from None


def _check_same_direction(study: Any, direction: str, name: str) -> None:
    if study.direction.name.lower() != direction:
        raise AstroError(
            f"study '{name}' exists and is to {study.direction.name.lower()}, but train.select_metric "
            f"asks to {direction}; use another --study name"
        )


def _enqueue_recipe_values(study: Any, params: list[Param], base: Mapping[str, Any]) -> list[str]:
    """A new study's first trial is the recipe's own values, so the search never ends worse than it."""
    notes: list[str] = []
    if study.trials:
        return notes
    fixed = {}
    for p in params:
        value = _get(base, p.key)
        if p.kind == "categorical" and value not in p.choices:
            notes.append(
                f"the recipe's {p.key}={value!r} is not among the choices; the first trial samples it"
            )
            continue
        if p.kind != "categorical" and not p.contains(value):
            notes.append(f"the recipe's {p.key}={value!r} lies outside [{p.low}, {p.high}]; trial 0 uses it")
        fixed[p.key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-range values: said above
        study.enqueue_trial(fixed, skip_if_exists=True)
    return notes


# ---------------------------------------------------------------------------------------------
# The end of a search: best.yaml, plots
# ---------------------------------------------------------------------------------------------


def best_recipe_yaml(study: Any, base: Mapping[str, Any], key: str) -> str:
    """The best trial's full recipe, ready for ``astro train --recipe`` (runs in ``<name>-best``)."""
    best = study.best_trial
    recipe = with_values(base, best.params)
    recipe.output.name = f"{recipe.output.name}-best"
    header = (
        f"# astro tune: the best of {len(study.trials)} trials in study '{study.study_name}': "
        f"trial {best.number}, {key} = {best.value:.6g}\n"
        f"# run: {best.user_attrs.get('run_dir', '?')}\n"
    )
    return header + recipe.to_yaml()


def _finish(
    study: Any,
    params: list[Param],
    base: Mapping[str, Any],
    tune_dir: Path,
    key: str,
    direction: str,
    notes: list[str],
) -> TuneResult:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best_yaml = None
    if complete:
        best_yaml = tune_dir / "best.yaml"
        atomic_write_text(best_yaml, best_recipe_yaml(study, base, key))
    plots, plot_notes = write_plots(study, tune_dir)
    return TuneResult(study, tune_dir, key, direction, best_yaml, plots, notes + plot_notes)


def write_plots(study: Any, tune_dir: Path) -> tuple[list[Path], list[str]]:
    """``history.png`` and ``importance.png`` from ``optuna.visualization.matplotlib``; a plot the
    study cannot support yet (too few finished trials, one distinct value) is skipped with a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    plots, notes = [], []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    wanted: list[tuple[str, Callable[[Any], Any], int]] = [
        ("history.png", ovm.plot_optimization_history, 1),
        ("importance.png", ovm.plot_param_importances, 2),
    ]
    for filename, plot, needed in wanted:
        if len(complete) < needed:
            notes.append(
                f"{filename} skipped: it needs {needed} finished trials, the study has {len(complete)}"
            )
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every call
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes.append(f"{filename} skipped: {exc}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(tune_dir / filename, buffer.getvalue())
        plots.append(tune_dir / filename)
    return plots, notes


def top_trials(study: Any, direction: str, n: int = TOP_TRIALS) -> list[Any]:
    """Finished trials best first, then pruned ones by their last value (for the table)."""
    import optuna

    state = optuna.trial.TrialState
    sign = -1 if direction == "maximize" else 1
    done = [t for t in study.trials if t.state == state.COMPLETE]
    done.sort(key=lambda t: sign * t.value)
    return done[:n]
