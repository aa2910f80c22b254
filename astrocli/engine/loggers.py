"""Experiment loggers: TensorBoard, MLflow and Weights & Biases beside the run directory's own files.

``output.loggers: [csv, tensorboard, mlflow, wandb]`` picks them (``csv`` is ``metrics.csv`` and the
other run-directory files, always written). Each is an optional extra; a missing one is one line that
names the ``pip install``. The trainer talks to all of them through one :class:`LoggerGroup`, so a
tuner's pruning callback is just another :class:`Logger`:

    loggers = build_loggers(recipe)            # rank 0 only; [] when only csv is asked for
    group = LoggerGroup([*loggers, my_callback])
    group.start(recipe, run_dir); group.log_epoch(1, row); group.complete(run_dir, summary)

A study (``astro tune``) or a cross-validation (``astro cv``) groups its runs under a parent:

    with parent_run(recipe, "cifar10-tune", kind="tune") as parent:   # MLflow parent run, W&B group
        for ...: train(recipe_i)                                         # nested under the parent
        parent.log_metrics({"best_val_top1": 93.1})

All logging goes through the libraries' own clients (``torch.utils.tensorboard``, ``MlflowClient``,
``wandb``); what is written here is only the mapping of astro's rows and recipe onto them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from astrocli.errors import AstroError, first_line
from astrocli.files import atomic_write_text
from astrocli.recipe import Recipe
from astrocli.redact import is_redacted, scrub

# The module each logger imports, and the extra that installs it.
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
ARTIFACTS = ("best.safetensors", "curves.png", "summary.json")  # uploaded at the end when present
MLFLOW_DB = "mlflow.db"  # the default tracking store, in output.dir beside the runs
MLFLOW_ARTIFACTS = "mlartifacts"  # its artifacts, beside it (MLflow's own default is ./mlruns in the cwd)
IDS_FILE = "loggers.json"  # remote run ids, so `astro train --resume` continues the same MLflow/W&B run

Warn = Callable[[str], None]


@runtime_checkable
class Logger(Protocol):
    """What the trainer calls; every method may be a no-op.

    ``status`` in :meth:`finish` is ``finished``, ``failed``, ``interrupted`` or ``pruned``.
    An exception raised by a logger stops training (a pruning callback relies on that); the built-in
    loggers therefore catch their own I/O errors after start and warn once instead.
    """

    def start(self, recipe: Recipe, run_dir: Path) -> None: ...

    def log_step(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None: ...

    def log_artifacts(self, run_dir: Path) -> None: ...

    def finish(self, summary: Mapping[str, Any], status: str = "finished") -> None: ...


class Callback:
    """A :class:`Logger` whose methods all do nothing: subclass it and override what you need."""

    def start(self, recipe: Recipe, run_dir: Path) -> None:
        pass

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        pass

    def log_artifacts(self, run_dir: Path) -> None:
        pass

    def finish(self, summary: Mapping[str, Any], status: str = "finished") -> None:
        pass


def exit_status(exc: BaseException | None) -> str:
    """The :meth:`Logger.finish` status for the exception that ended training (None: finished)."""
    if exc is None:
        return "finished"
    name = type(exc).__name__
    if name == "TrialPruned":  # optuna's; matched by name so this module never imports optuna
        return "pruned"
    if name in ("TrainingInterrupted", "KeyboardInterrupt"):
        return "interrupted"
    return "failed"


class LoggerGroup:
    """Fans each call out to several loggers; :meth:`session` closes them all when training fails."""

    def __init__(self, loggers: Sequence[Logger] = ()) -> None:
        self.loggers = list(loggers)
        self._open: list[Logger] = []

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def start(self, recipe: Recipe, run_dir: Path) -> None:
        for logger in self.loggers:
            logger.start(recipe, run_dir)
            self._open.append(logger)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        for logger in self._open:
            logger.log_step(step, values)

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        for logger in self._open:
            logger.log_epoch(epoch, row)

    def complete(self, run_dir: Path, summary: Mapping[str, Any]) -> None:
        """The run finished: upload its artifacts, then close every logger."""
        for logger in self._open:
            logger.log_artifacts(run_dir)
        self.close(summary, "finished")

    def close(self, summary: Mapping[str, Any], status: str) -> None:
        open_, self._open = self._open, []
        for logger in open_:
            logger.finish(summary, status)

    @contextlib.contextmanager
    def session(self, recipe: Recipe, run_dir: Path) -> Iterator[LoggerGroup]:
        """Start the loggers; if the block raises, finish them with the matching status and re-raise."""
        try:
            self.start(recipe, run_dir)
            yield self
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the training error is the one to report
                self.close({}, exit_status(exc))
            raise


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def missing_extra_message(what: str, extra: str, module: str) -> str:
    """One line naming the pip install (the CLI escapes it, so rich keeps the ``[extra]``)."""
    return f"{what} needs the '{module}' package, which is not installed: pip install 'astrocli[{extra}]'"


def has_module(name: str) -> bool:
    """Whether ``import name`` would find the module, without importing it (mlflow takes seconds)."""
    if name in sys.modules:
        return sys.modules[name] is not None  # None: blocked on purpose (tests do this)
    return importlib.util.find_spec(name) is not None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a row, without ``epoch`` (the step) and without booleans."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _read_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_id(run_dir: Path, key: str, value: str) -> None:
    ids = _read_ids(run_dir)
    ids[key] = value
    atomic_write_text(run_dir / IDS_FILE, json.dumps(ids, indent=2))


class _Guarded(Callback):
    """Base of the built-in loggers: after start, an I/O error warns once and turns the logger off
    for the rest of the run (every later call returns at once), because a network hiccup must not
    end a long training run. Its methods say so with ``@guarded(what)``."""

    name = "logger"

    def __init__(self, warn: Warn | None = None) -> None:
        self._warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
        self._failed = False


def guarded(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a :class:`_Guarded` logger's method: skipped once the logger has failed; its first
    exception warns (naming ``what``) and turns the logger off instead of ending training."""

    def decorate(method: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(method)
        def call(self: _Guarded, *args: Any, **kwargs: Any) -> None:
            if self._failed:
                return
            try:
                method(self, *args, **kwargs)
            except Exception as exc:
                self._failed = True
                error = f"{type(exc).__name__}: {first_line(exc, 300)}"
                text = f"{self.name} logging stopped ({what}: {error}); training goes on"
                self._warn(scrub(text, [getattr(self, "uri", None)]))  # a library's message may quote the URL

        return call

    return decorate


# ---------------------------------------------------------------------------------------------
# Parent runs (a tune study, a cross-validation)
# ---------------------------------------------------------------------------------------------


@dataclass
class ParentRun:
    """The run that groups a study's trials or a cross-validation's folds.

    ``mlflow_run_id`` is set when the recipe logs to MLflow (children get ``mlflow.parentRunId``);
    ``name`` is also the W&B group of the children.
    """

    name: str
    kind: str
    mlflow_run_id: str | None = None
    _client: Any = field(default=None, repr=False)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._client is not None:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self._client.log_batch(self.mlflow_run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        if self._client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
            self._client.log_batch(self.mlflow_run_id, metrics=items)

    def log_artifact(self, path: str | Path) -> None:
        if self._client is not None and Path(path).exists():
            self._client.log_artifact(self.mlflow_run_id, str(path))


_PARENT: contextvars.ContextVar[ParentRun | None] = contextvars.ContextVar("astro_parent_run", default=None)


def current_parent() -> ParentRun | None:
    """The :func:`parent_run` the current training runs belong to, if any."""
    return _PARENT.get()


@contextlib.contextmanager
def parent_run(
    recipe: Recipe, name: str, kind: str = "tune", run_id: str | None = None
) -> Iterator[ParentRun]:
    """Group the runs trained inside the block under one parent.

    MLflow (when ``output.loggers`` has it): a parent run named ``name`` (``run_id`` continues an
    existing one, e.g. a resumed study) whose children are the runs trained inside the block, through
    the ``mlflow.parentRunId`` tag; it ends FINISHED, or FAILED/KILLED if the block raises.
    W&B: the children share the group ``name``. TensorBoard needs nothing (point it at the folder).
    """
    parent = ParentRun(name=name, kind=kind)
    if "mlflow" in recipe.output.loggers:
        check_extras(recipe)
        client = mlflow_client(recipe)
        if run_id is None:
            experiment = _mlflow_experiment(client, recipe.output.project, recipe)
            tags = {"astro.kind": kind, "mlflow.runName": name}
            run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
        parent.mlflow_run_id, parent._client = run_id, client
    token = _PARENT.set(parent)
    status = "FINISHED"
    try:
        yield parent
    except BaseException as exc:
        status = {"interrupted": "KILLED"}.get(exit_status(exc), "FAILED")
        raise
    finally:
        _PARENT.reset(token)
        if parent._client is not None:
            with contextlib.suppress(Exception):
                parent._client.set_terminated(parent.mlflow_run_id, status=status)


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------


def _tb_tag(key: str) -> str:
    """``val_top1`` -> ``val/top1``; ``ema_top1`` -> ``val/ema_top1``; others -> ``epoch/<key>``."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    if key.startswith("ema_"):
        return f"val/{key}"
    return f"epoch/{key}"


def _hparam_value(value: Any) -> int | float | str | bool:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class TensorBoardLogger(_Guarded):
    """Event files in the run directory: per-step ``train/loss`` and ``train/lr``, per-epoch ``val/*``
    and ``epoch/*`` scalars, the recipe as text and as hparams (with the best metrics).

    The confusion matrix is logged as an image when an epoch row carries ``confusion_matrix`` (a
    K x K list); the trainer's per-epoch evaluation sums only loss and hits, so today it is absent.
    """

    name = "tensorboard"

    def start(self, recipe: Recipe, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: keeps start-up torch-free

        self.recipe = recipe
        self.writer = SummaryWriter(log_dir=str(run_dir))  # `tensorboard --logdir runs` shows every run
        self.writer.add_text("recipe", "```yaml\n" + recipe.to_yaml() + "```", 0)

    @guarded("step")
    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    @guarded("epoch")
    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        for key, value in numeric(row).items():
            self.writer.add_scalar(_tb_tag(key), value, epoch)
        matrix = row.get("confusion_matrix")
        if matrix is not None:
            self.writer.add_figure("val/confusion_matrix", _matrix_figure(matrix), epoch)
        self.writer.flush()

    @guarded("finish")
    def finish(self, summary: Mapping[str, Any], status: str = "finished") -> None:
        best = {
            f"hparam/{k}": float(v)
            for k, v in numeric(summary).items()
            if k.startswith(("best_", "final_")) and v == v  # v == v: not NaN
        }
        if best:
            hparams = {k: _hparam_value(v) for k, v in flatten(self.recipe.to_dict()).items()}
            # run_name=".": the hparams go into this run's folder, not a timestamped sub-folder.
            self.writer.add_hparams(hparams, best, run_name=".")
        with contextlib.suppress(Exception):
            self.writer.close()


def _matrix_figure(matrix: Sequence[Sequence[float]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(data, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    return fig


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------


def default_mlflow_uri(output_dir: str | Path) -> str:
    """The local store beside the runs: ``sqlite:///<output.dir>/mlflow.db`` (MLflow 3 refuses its
    file store unless MLFLOW_ALLOW_FILE_STORE=true; a SQLite file works out of the box)."""
    return f"sqlite:///{(Path(output_dir) / MLFLOW_DB).resolve()}"


def mlflow_tracking_uri(recipe: Recipe) -> str:
    """``MLFLOW_TRACKING_URI``, else ``output.mlflow_uri``, else :func:`default_mlflow_uri`.

    A recipe read back from a run (``astro train --resume``) holds the URL redacted
    (``user:***@host``): the password comes back only from ``MLFLOW_TRACKING_URI`` or an
    ``output.mlflow_uri=URL`` override, never from the run's files.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or recipe.output.mlflow_uri
    if uri and is_redacted(uri):
        raise AstroError(
            f"output.mlflow_uri {uri} has its password left out of the run's files; give it again: "
            "set MLFLOW_TRACKING_URI=URL, or add output.mlflow_uri=URL to the command",
            exit_code=2,
        )
    return uri or default_mlflow_uri(recipe.output.dir)


def _file_store_hint(uri: str, exc: Exception) -> str:
    """What to do when MLflow 3 refuses its file store (an explicit file:// URI or a plain path)."""
    if "MLFLOW_ALLOW_FILE_STORE" not in str(exc):
        return ""
    return (
        "; MLflow's file store is off unless MLFLOW_ALLOW_FILE_STORE=true is set: set it, or use "
        f"{default_mlflow_uri('runs')}-style SQLite (the default when output.mlflow_uri is unset)"
    )


def mlflow_client(recipe: Recipe, uri: str | None = None) -> Any:
    """An ``MlflowClient`` for the recipe's tracking URI (``uri`` when already resolved)."""
    from mlflow.tracking import MlflowClient

    # stdout belongs to astro's console (`--jsonl` prints only JSON there): no "View run" lines,
    # nor the INFO lines a new SQLite store's table creation prints.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri or mlflow_tracking_uri(recipe))


def _mlflow_experiment(client: Any, name: str, recipe: Recipe | None = None) -> str:
    """The id of experiment ``name``, created on first use (two processes may race: re-read); in a
    local SQLite store its artifacts go to ``<output.dir>/mlartifacts``."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if recipe is not None and str(client.tracking_uri).startswith("sqlite:"):
        location = (Path(recipe.output.dir) / MLFLOW_ARTIFACTS).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class MlflowLogger(_Guarded):
    """One MLflow run per astro run: the flattened recipe as params, each epoch's numbers as metrics
    (step = epoch), ``best.safetensors``, ``curves.png`` and ``summary.json`` as artifacts; nested
    under the current :func:`parent_run` when there is one."""

    name = "mlflow"

    def start(self, recipe: Recipe, run_dir: Path) -> None:
        from mlflow.entities import Param

        uri = self.uri = mlflow_tracking_uri(recipe)
        try:
            self.client = mlflow_client(recipe, uri)
            previous = _read_ids(run_dir).get("mlflow_run_id")
            if previous:  # `astro train --resume`: continue the same MLflow run
                self.client.update_run(previous, status="RUNNING")
                self.run_id = previous
                return
            experiment = _mlflow_experiment(self.client, recipe.output.project, recipe)
            tags = {"astro.run_dir": str(run_dir), "mlflow.source.name": "astro"}
            parent = current_parent()
            if parent is not None and parent.mlflow_run_id:
                tags["mlflow.parentRunId"] = parent.mlflow_run_id
            self.run_id = self.client.create_run(experiment, run_name=run_dir.name, tags=tags).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flatten(recipe.to_dict()).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        except Exception as exc:
            message = (
                f"MLflow tracking at {uri} failed to start a run ({type(exc).__name__}: "
                f"{first_line(exc, limit=300)}){_file_store_hint(uri, exc)}; check MLFLOW_TRACKING_URI or "
                "output.mlflow_uri, or drop mlflow from output.loggers"
            )
            raise AstroError(scrub(message, [uri]), exit_code=1) from None
        _write_id(run_dir, "mlflow_run_id", self.run_id)

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items() if v == v]  # MLflow rejects NaN
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    @guarded("epoch")
    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        # Per-epoch only: a request per logged step would put network latency into the training loop.
        self._log_metrics(numeric(row), epoch)

    @guarded("artifacts")
    def log_artifacts(self, run_dir: Path) -> None:
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))

    @guarded("finish")
    def finish(self, summary: Mapping[str, Any], status: str = "finished") -> None:
        best = {k: v for k, v in numeric(summary).items() if k.startswith(("best_", "final_"))}
        self._log_metrics(best, int(summary.get("epochs") or 0))
        if status != "finished":
            self.client.set_tag(self.run_id, "astro.status", status)
        mlflow_status = {"finished": "FINISHED", "interrupted": "KILLED", "pruned": "KILLED"}
        self.client.set_terminated(self.run_id, status=mlflow_status.get(status, "FAILED"))


# ---------------------------------------------------------------------------------------------
# Weights & Biases
# ---------------------------------------------------------------------------------------------


def _wandb_has_key() -> bool:
    """An API key in the environment or in ~/.netrc (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    with contextlib.suppress(Exception):
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    return False


class WandbLogger(_Guarded):
    """A W&B run in ``<run_dir>/wandb``: the recipe as config, per-step and per-epoch metrics, the
    summary. Without an API key it runs offline (``WANDB_MODE=offline``); ``wandb sync`` uploads later."""

    name = "wandb"

    def start(self, recipe: Recipe, run_dir: Path) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_has_key() else "offline")
        parent = current_parent()
        previous = _read_ids(run_dir).get("wandb_id")  # `astro train --resume`: the same W&B run
        try:
            self.run = wandb.init(
                project=recipe.output.project,
                name=run_dir.name,
                id=previous,
                resume="allow" if previous else None,
                dir=str(run_dir),
                config=recipe.to_dict(),
                group=parent.name if parent else None,
                job_type=parent.kind if parent else "train",
                mode=mode,
                reinit="create_new",  # several runs in one process (tune trials)
            )
        except Exception as exc:
            raise AstroError(
                f"W&B failed to start a run ({type(exc).__name__}: {exc}); set WANDB_MODE=offline "
                "or drop wandb from output.loggers",
                exit_code=1,
            ) from None
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("epoch")
        for prefix in ("val_*", "train_loss", "lr", "img_per_s", "seconds", "ema_*"):
            self.run.define_metric(prefix, step_metric="epoch")
        _write_id(run_dir, "wandb_id", self.run.id)

    @guarded("step")
    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({"train/step": step, **{f"train/{k}": v for k, v in values.items()}})

    @guarded("epoch")
    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        self.run.log({"epoch": epoch, **numeric(row)})

    @guarded("artifacts")
    def log_artifacts(self, run_dir: Path) -> None:
        for name in ("curves.png", "summary.json"):
            if (run_dir / name).is_file():
                self.run.save(str(run_dir / name), base_path=str(run_dir), policy="now")

    @guarded("finish")
    def finish(self, summary: Mapping[str, Any], status: str = "finished") -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.summary["astro_status"] = status
        self.run.finish(exit_code=0 if status in ("finished", "pruned") else 1)


# ---------------------------------------------------------------------------------------------
# Building them from a recipe
# ---------------------------------------------------------------------------------------------

LOGGER_CLASSES: dict[str, type[_Guarded]] = {
    "tensorboard": TensorBoardLogger,
    "mlflow": MlflowLogger,
    "wandb": WandbLogger,
}


def check_extras(recipe: Recipe) -> None:
    """Raise one line per the first logger in ``output.loggers`` whose package is missing."""
    for name in recipe.output.loggers:
        module = EXTRAS.get(name)
        if module and not has_module(module):
            raise AstroError(missing_extra_message(f"output.loggers: {name}", name, module))


def build_loggers(recipe: Recipe, warn: Warn | None = None) -> list[Logger]:
    """The loggers ``output.loggers`` asks for (csv is the trainer's own files, so it adds none).

    Call it on rank 0 only: under torchrun the other ranks log nothing.
    """
    check_extras(recipe)
    return [LOGGER_CLASSES[name](warn) for name in dict.fromkeys(recipe.output.loggers) if name != "csv"]
