"""Recipes: typed, strictly validated YAML training configurations.

A recipe is YAML with the sections below. Every key has a type; loading coerces by that type
(PyYAML reads ``55e-5`` as a *string*, which silently broke the official CCT configs) and
rejects unknown keys with the closest valid names. Overrides ``a.b=value`` are parsed as YAML
scalars and validated the same way.

    recipe = load_recipe("recipes/cifar10_cct_7_3x1.yaml", ["train.epochs=5"])
    recipe.model.name, recipe.data.img_size, recipe.train.lr
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from astrocli.errors import RecipeError, first_line
from astrocli.redact import redact_url

PACKAGED_RECIPES = Path(__file__).parent / "recipes"


@dataclass
class ModelConfig:
    """Which zoo model to build (``astro models`` lists the names)."""

    name: str = "cct_7_3x1_32"
    drop_rate: float = 0.0
    drop_path_rate: float | None = None  # None: the model's own default
    # Weights to start from: a .safetensors (.pth/.bin) file or folder, hf-hub:<org>/<name>, or timm
    # (a timm/<name> model's default pretrained tag); see astrocli/models/pretrained.py
    pretrained: str | None = None


# The data sources astrocli.data.sources.SOURCES registers, named here so that the recipe's own type
# check refuses any other (tests/test_recipe.py keeps the two lists equal).
SourceName = Literal[
    "imagefolder",
    "tiny_imagenet",
    "galaxy10_decals",
    "galaxy10_sdss",
    "cifar10",
    "cifar100",
    "mnist",
    "fashion_mnist",
    "flowers102",
    "digits",
    "h5",
    "npz",
]


@dataclass
class DataConfig:
    """Where the images come from and how they are split and fed."""

    source: SourceName = "imagefolder"  # a source registered in astrocli.data.sources.SOURCES
    root: str = "data"
    img_size: int = 32
    in_chans: int = 3
    # held-out split for model selection: auto (val, else stratified; never test) | val | test | stratified
    # (test = the papers' protocol: select on the test split; labelled as such in the run)
    split: str = "auto"
    val_fraction: float = 0.1  # seeded stratified split carved out of train when the source has no val split
    split_seed: int = 0
    download: bool = True
    url: str | None = None  # override the download URL (galaxy10_*)
    sha256: str | None = None  # override the expected checksum (galaxy10_*)
    in_memory: bool = False  # read a whole h5 file into memory (default: lazy reads)
    mean: list[float] | None = None  # None: the source's statistics
    std: list[float] | None = None
    pipeline: Literal["auto", "loader", "tensor"] = "auto"  # tensor: decoded uint8 cache + batched aug
    cache_dir: str | None = None  # tensor cache folder (default: ~/.cache/astro/tensors, platformdirs)
    num_workers: int = 4
    crop_pct: float = 1.0  # evaluation: resize to img_size / crop_pct, then centre-crop img_size
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bicubic"
    # Scientific data (docs/scientific-data.md). pixels: uint8 = 8-bit PIL images (1 or 3 channels);
    # float = float32 [C, H, W] arrays (FITS, 16-bit, any band count); auto picks float for data
    # that is not 8-bit, in_chans not 1/3, or a scaling; the run records what was chosen.
    pixels: Literal["auto", "uint8", "float"] = "auto"
    scaling: Literal["none", "minmax", "percentile", "asinh", "zscale"] = "none"  # per image and band
    scaling_params: dict[str, float] = field(default_factory=dict)  # e.g. {percent: 99.5, a: 0.1}
    fits_hdu: str | None = None  # FITS HDU name or number (None: the first HDU holding an image)
    layout: Literal["auto", "channels_first", "channels_last"] = "auto"  # band axis of 3-D arrays
    nan_fill: float | None = None  # value for NaN/inf pixels (None: refuse such images)
    images_key: str = "images"  # h5 / npz: the images array
    labels_key: str = "labels"  # h5 / npz: the integer labels array
    class_names: list[str] | None = None  # h5 / npz: names of classes 0..K-1 (default class_<i>)
    # Training order: uniform (each image once per epoch) | balanced (each class equally often,
    # drawn with replacement; astrocli/data/balance.py)
    sampler: Literal["uniform", "balanced"] = "uniform"
    folds: int = 0  # k-fold cross-validation (`astro cv` sets these): folds over train (0 = off)
    fold: int = 0  # the held-out fold (0-based) when data.folds > 0
    fold_repeat: int = 0  # the repeat of repeated k-fold (folds reshuffled with split_seed per repeat)
    # Lists written by `astro audit --fix` (docs/audit.md): images to leave out of every split (one key
    # a line: a path under data.root, or <split>:<row> for arrays), and labels to change (CSV key,label).
    # The data folder itself is never touched.
    exclude: str | None = None
    relabel: str | None = None


@dataclass
class AugmentConfig:
    """Training augmentation (timm's implementations, or the batched tensor equivalents)."""

    crop: Literal["random_resized_crop", "pad_crop", "resize"] = "random_resized_crop"
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized-crop area range
    ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    padding: int = 4  # pad_crop: pixels of padding
    hflip: float = 0.5
    vflip: float = 0.0
    auto_augment: str | None = None  # timm string: rand-m9-mstd0.5-inc1 | augmix-... | trivialaugment | v0
    color_jitter: float | None = None
    re_prob: float = 0.0  # random erasing probability
    re_mode: Literal["const", "rand", "pixel"] = "pixel"
    re_count: int = 1
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_off_epoch: int = 0  # turn mixup/cutmix off from this epoch (0 = never)
    label_smoothing: float = 0.0
    # Fills the keys a recipe leaves out (augmentation, lr, warmup, epochs) from what the data is:
    # auto (light, or strong for runs of 100+ epochs) | light | strong | none (fixed defaults;
    # the paper recipes, which spell out their settings). Rules: astrocli/data/defaults.py
    preset: Literal["auto", "none", "light", "strong"] = "auto"


@dataclass
class TrainConfig:
    """Optimisation, schedule and execution."""

    epochs: int = 10
    # minutes: a time budget instead of train.epochs (planned from the first epoch's measured time;
    # train.epochs then shapes only the first epoch's schedule; astrocli/engine/budget.py)
    time: float | None = None
    batch_size: int = 128  # per process
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    sched: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    decay_epochs: int = 30  # step schedule
    decay_rate: float = 0.1  # step schedule
    grad_clip: float | None = None
    accum_steps: int = 1
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # auto: bf16 on a GPU that has it / a measured CPU
    # channels-last memory format: auto = on where benchmarks/memory_format.py measured it faster
    # (astrocli/data/defaults.py: CHANNELS_LAST_CPU); the run's recipe records what auto chose
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile: auto (CUDA yes; the CPU only for models measured faster, engine/compiling.py),
    # true or false; a failing compile trains eagerly with one warning
    compile: Literal["auto"] | bool = "auto"
    ema: bool = False
    ema_decay: float = 0.9998
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 1
    max_steps_per_epoch: int | None = None  # cap for smoke tests and short schedules
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    layer_decay: float | None = None  # fine-tuning: lr x layer_decay^(layers above), timm's layer decay
    freeze_epochs: int = 0  # fine-tuning: train only the classifier for the first N epochs
    head_lr_mult: float = 1.0  # fine-tuning: the classifier's learning-rate multiplier
    select_metric: Literal["top1", "macro_f1", "balanced_accuracy", "loss"] = (
        "top1"  # decides best.safetensors
    )
    patience: int = 0  # stop after this many evaluations without improvement (0 = off)
    class_weights: Literal["none", "balanced"] = "none"  # balanced: scikit-learn's weights in the loss
    calibrate: bool = True  # fit a softmax temperature on the held-out split after training


@dataclass
class OutputConfig:
    """Where the run is written."""

    dir: str = "runs"
    name: str = "run"
    plots: bool = True
    save_every: int = 1  # epochs between `last` checkpoints
    log: Literal["rich", "quiet", "jsonl"] = "rich"
    # Experiment loggers: csv (metrics.csv, always on), tensorboard, mlflow, wandb (optional extras).
    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = field(default_factory=lambda: ["csv"])
    # MLflow tracking URI (MLFLOW_TRACKING_URI wins; default sqlite:///<dir>/mlflow.db); stored redacted
    mlflow_uri: str | None = None
    project: str = "astro"  # MLflow experiment / W&B project name
    report: bool = True  # astro train / astro cv write report.html (one self-contained page) at the end


@dataclass
class Recipe:
    """A whole recipe. ``description`` and ``target`` document the paper result it reproduces."""

    description: str = ""
    target: str = ""  # e.g. "Astroformer paper, Galaxy10 DECaLS top-1 94.86%"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self, secrets: bool = False) -> dict[str, Any]:
        """The recipe as plain data (what ``recipe.yaml`` and checkpoint metadata hold).

        A password in ``output.mlflow_uri`` is replaced by ``***`` (astrocli/redact.py): what is
        written or logged never carries it. ``secrets=True`` keeps it, for a recipe rebuilt in memory
        (a tuning trial) that must still reach the tracking server.
        """
        data = dataclasses.asdict(self)
        if not secrets:
            data["output"]["mlflow_uri"] = redact_url(data["output"]["mlflow_uri"])
        return data

    def to_yaml(self) -> str:
        """The fully resolved recipe as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """Find a recipe: a path that exists, else a recipe shipped in the package (``galaxy10``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    packaged = PACKAGED_RECIPES / f"{stem}.yaml"
    if packaged.is_file():
        return packaged
    available = sorted(p.stem for p in PACKAGED_RECIPES.glob("*.yaml"))
    hint = difflib.get_close_matches(stem, available, n=3)
    suggestion = f" Did you mean: {', '.join(hint)}?" if hint else ""
    raise RecipeError(
        f"recipe '{name_or_path}' not found: not a file, and not a packaged recipe.{suggestion} "
        f"See `astro recipes` for the {len(available)} shipped recipes."
    )


def load_recipe(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load, validate and override a recipe.

    Args:
        name_or_path: a YAML file, a packaged recipe name, or None for all defaults.
        overrides: ``dotted.key=value`` strings applied after the file, values read as YAML scalars.

    Raises:
        RecipeError: unknown key (with the closest valid keys), wrong type, bad override syntax.
    """
    raw: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_recipe_path(name_or_path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RecipeError(describe_yaml_error(path, exc)) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise RecipeError(
                f"{path}: a recipe must be a YAML mapping of sections, got {type(loaded).__name__}"
            )
        raw = loaded
        raw.setdefault("output", {})
        if isinstance(raw["output"], dict):
            raw["output"].setdefault("name", path.stem)
    for item in overrides or []:
        apply_override(raw, item)
    return recipe_from_dict(raw)


@dataclass(frozen=True)
class _OverrideValue:
    """An override's value as typed and as YAML read it: a ``str`` key keeps the typed text
    (``data.sha256=0123...`` must not become the number 123...), other keys use the YAML value."""

    text: str
    parsed: Any

    def __repr__(self) -> str:
        return repr(self.parsed)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to a raw recipe mapping, in place."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override '{item}' is not KEY=VALUE (for example train.epochs=5)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:  # an absent or empty section (`augment:` with nothing under it)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = _OverrideValue(value.strip(), parsed)


def describe_yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line naming the file, line and column of a YAML syntax error (PyYAML's text spans lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or first_line(exc)
    if mark is None:
        return f"{path}: not valid YAML ({problem}); fix the syntax"
    return (
        f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({problem}); "
        "fix the syntax there (indent with spaces, `key: value`)"
    )


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """Build a :class:`Recipe` from plain data, strictly: every key known, every value typed and in range.

    The recipe remembers which keys ``raw`` set (:func:`given_keys`): data-driven defaults
    (astrocli/data/defaults.py) fill only the others.
    """
    recipe = _build(Recipe, raw, "")
    check_ranges(recipe)
    recipe.__dict__["_given"] = frozenset(_leaf_paths(raw))  # not a field: never serialised
    return recipe


# --------------------------------------------------------------------------------------------
# Range checks: one table of constraints, applied to every recipe built (train, eval, cv, tune,
# resume), so nothing starts that cannot finish. Without them a zero batch size surfaced as a
# ZeroDivisionError mid-setup and `train.epochs=0` as timm's AssertionError.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """A test a key's value must pass (None always passes: it means "the default") and what it expects."""

    test: Callable[[Any], bool]
    expect: str


def _in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Constraint:
    def test(v: float) -> bool:
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    brackets = ("(" if low_open else "[", ")" if high_open else "]")
    return Constraint(test, f"a number in {brackets[0]}{low:g}, {high:g}{brackets[1]}")


POSITIVE = Constraint(lambda v: v > 0, "positive")
NON_NEGATIVE = Constraint(lambda v: v >= 0, "zero or more")
PROBABILITY = _in_range(0.0, 1.0)
NON_EMPTY = Constraint(lambda v: bool(v.strip()), "a non-empty name")
SPLITS = ("auto", "val", "test", "stratified")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _range_pair(low: float, high: float) -> Constraint:
    """``[lo, hi]`` with ``low <= lo <= hi <= high`` (random-resized-crop scale and ratio)."""
    return Constraint(
        lambda v: len(v) == 2 and low <= v[0] <= v[1] <= high,
        f"two numbers [lo, hi] with {low:g} <= lo <= hi <= {high:g}",
    )


CONSTRAINTS: dict[str, Constraint] = {
    "model.drop_rate": _in_range(0.0, 1.0, high_open=True),
    "model.drop_path_rate": _in_range(0.0, 1.0, high_open=True),
    "data.img_size": POSITIVE,
    "data.in_chans": POSITIVE,  # 8-bit sources take 1 or 3; the float path any band count (data/sources.py)
    "data.split": Constraint(lambda v: v in SPLITS, "one of " + ", ".join(repr(v) for v in SPLITS)),
    "data.val_fraction": _in_range(0.0, 1.0, low_open=True, high_open=True),
    "data.num_workers": NON_NEGATIVE,
    "data.crop_pct": _in_range(0.0, 1.0, low_open=True),
    "data.mean": Constraint(lambda v: len(v) > 0, "a list with one value per channel"),
    "data.std": Constraint(lambda v: len(v) > 0 and all(s > 0 for s in v), "a list of positive numbers"),
    "augment.scale": _range_pair(0.0, 1.0),
    "augment.ratio": _range_pair(1e-6, math.inf),
    "augment.padding": NON_NEGATIVE,
    "augment.hflip": PROBABILITY,
    "augment.vflip": PROBABILITY,
    "augment.color_jitter": NON_NEGATIVE,
    "augment.re_prob": PROBABILITY,
    "augment.re_count": POSITIVE,
    "augment.mixup": NON_NEGATIVE,
    "augment.cutmix": NON_NEGATIVE,
    "augment.mixup_prob": PROBABILITY,
    "augment.mixup_switch_prob": PROBABILITY,
    "augment.mixup_off_epoch": NON_NEGATIVE,
    "augment.label_smoothing": _in_range(0.0, 1.0, high_open=True),
    "train.epochs": POSITIVE,
    "train.time": POSITIVE,
    "train.batch_size": POSITIVE,
    "train.lr": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.momentum": PROBABILITY,
    "train.warmup_epochs": NON_NEGATIVE,
    "train.warmup_lr": NON_NEGATIVE,
    "train.min_lr": NON_NEGATIVE,
    "train.cooldown_epochs": NON_NEGATIVE,
    "train.decay_epochs": POSITIVE,
    "train.decay_rate": POSITIVE,
    "train.grad_clip": POSITIVE,
    "train.accum_steps": POSITIVE,
    "train.ema_decay": PROBABILITY,
    "train.eval_every": POSITIVE,
    "train.max_steps_per_epoch": POSITIVE,
    "train.device": Constraint(lambda v: bool(DEVICE_PATTERN.fullmatch(v)), "auto, cpu, cuda or cuda:N"),
    "output.name": NON_EMPTY,
    "output.save_every": POSITIVE,
    "train.patience": NON_NEGATIVE,
    "train.layer_decay": _in_range(0.0, 1.0, low_open=True),
    "train.freeze_epochs": NON_NEGATIVE,
    "train.head_lr_mult": POSITIVE,
}


def check_ranges(recipe: Recipe) -> None:
    """Raise RecipeError for the first value :data:`CONSTRAINTS` rejects, naming the key and a fix."""
    for key, constraint in CONSTRAINTS.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if value is None or constraint.test(value):
            continue
        default = getattr(getattr(Recipe(), section), name)
        example = f"(the default is {key}={_yaml_scalar(default)})"
        raise RecipeError(
            f"recipe key '{key}' must be {constraint.expect}, got {_yaml_scalar(value)} {example}"
        )


def _yaml_scalar(value: Any) -> str:
    """A value as it would be typed in an override (``[0.08, 1.0]``, ``null``, ``cpu``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def given_keys(recipe: Recipe) -> frozenset[str]:
    """Dotted keys (``augment.crop``) the recipe's YAML and overrides set; for a recipe built in
    code (``Recipe()``), none."""
    return recipe.__dict__.get("_given", frozenset())


def mark_given(recipe: Recipe, keys: set[str] | frozenset[str]) -> None:
    """Record ``keys`` as set (e.g. after defaults filled them in)."""
    recipe.__dict__["_given"] = given_keys(recipe) | frozenset(keys)


def set_given(recipe: Recipe, keys: set[str] | frozenset[str]) -> None:
    """Record exactly ``keys`` as the ones the user set. A recipe rebuilt from a full dict (a tuning
    trial) counts every key as set, and ``augment.preset: auto`` would then fill nothing."""
    recipe.__dict__["_given"] = frozenset(keys)


def _leaf_paths(raw: Any, prefix: str = "") -> list[str]:
    if not isinstance(raw, dict):
        return []
    paths = []
    for key, value in raw.items():
        if isinstance(value, dict):
            paths.extend(_leaf_paths(value, f"{prefix}{key}."))
        elif not (prefix == "" and value is None):  # an empty section (`augment:`) sets nothing
            paths.append(f"{prefix}{key}")
    return paths


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"'{prefix.rstrip('.') or 'recipe'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields:
            candidates = [f"{prefix}{name}" for name in fields]
            close = difflib.get_close_matches(path, candidates, n=3, cutoff=0.5)
            hint = (
                f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(candidates)}"
            )
            raise RecipeError(f"unknown recipe key '{path}'{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            values[key] = _build(hint_type, value or {}, f"{path}.")
        else:
            values[key] = _coerce(value, hint_type, path)
    return cls(**values)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_type_name(item)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Coerce ``value`` to ``tp`` or raise naming the key and the expected type."""
    origin = typing.get_origin(tp)
    fail = RecipeError(f"recipe key '{path}' must be {_type_name(tp)}, got {value!r}")
    if isinstance(value, _OverrideValue):
        if tp is str:
            return value.text
        if origin not in (typing.Union, types.UnionType):
            return _coerce(value.parsed, tp, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        plain = value.parsed if isinstance(value, _OverrideValue) else value
        if plain is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except RecipeError:
                continue
        raise fail
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise fail
    if origin is dict:  # a mapping of typed values (data.scaling_params)
        _key_type, item = typing.get_args(tp)
        if isinstance(value, dict):
            return {str(k): _coerce(v, item, f"{path}.{k}") for k, v in value.items()}
        raise fail
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        raise fail
    return _coerce_scalar(value, tp, path, fail)


def _coerce_scalar(value: Any, tp: Any, path: str, fail: RecipeError) -> Any:
    """The plain types of :func:`_coerce`: bool, int, float, str (and Any, taken as given)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise fail
        try:
            number = float(value)  # a str too: PyYAML reads 55e-5 (no dot) as a string
        except ValueError:
            raise fail from None
        if not math.isfinite(number):
            raise RecipeError(f"recipe key '{path}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail
    if tp is Any:
        return value
    raise fail
